//! The demo's own HTTP/1.1 on blocking sockets: just enough for its services and client
//! (Content-Length bodies, keep-alive), so `sniffer demo` needs nothing installed.
use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
};

/// Largest head or body the demo accepts.
const MAX: usize = 1 << 20;

/// A request or response as read off the wire.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// `GET /x HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// (method, target) of a request.
    pub fn request_line(&self) -> (&str, &str) {
        let mut w = self.start.split(' ');
        (w.next().unwrap_or(""), w.next().unwrap_or(""))
    }

    /// The status of a response.
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads one message; `Ok(None)` when the peer closed before a new one began.
pub fn read<R: io::Read>(r: &mut BufReader<R>) -> io::Result<Option<Message>> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    let mut m = Message {
        start: start.trim_end().to_owned(),
        ..Message::default()
    };
    let mut head = start.len();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        head += n;
        if n == 0 || head > MAX {
            return Err(bad("the head did not end"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("a header without ':'"))?;
        m.headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let len: usize = m
        .header("Content-Length")
        .map_or(Ok(0), str::parse)
        .map_err(|_| bad("a bad Content-Length"))?;
    if len > MAX {
        return Err(bad("a body too large"));
    }
    m.body = vec![0; len];
    r.read_exact(&mut m.body)?;
    Ok(Some(m))
}

/// The bytes of a message with `Content-Length` set from the body.
pub fn encode(start: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{start}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A keep-alive client connection.
pub struct Client {
    host: String,
    conn: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> io::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        Ok(Self {
            host: format!("127.0.0.1:{port}"),
            conn: BufReader::new(s),
        })
    }

    /// Sends a request and reads its response.
    pub fn call(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Message> {
        let mut all = vec![("Host", self.host.as_str()), ("User-Agent", "sniffer-demo")];
        all.extend_from_slice(headers);
        if !body.is_empty() {
            all.push(("Content-Type", "application/json"));
        }
        let bytes = encode(&format!("{method} {target} HTTP/1.1"), &all, body);
        self.conn.get_mut().write_all(&bytes)?;
        read(&mut self.conn)?.ok_or_else(|| bad("the server closed the connection"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn encode_sets_the_length() {
        assert_eq!(
            encode("HTTP/1.1 201 Created", &[("X-Subject-Token", "t")], b"{}"),
            b"HTTP/1.1 201 Created\r\nX-Subject-Token: t\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn read_takes_one_message_at_a_time_and_refuses_bad_heads() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\nContent-Length: x\r\n\r\n")
                .unwrap();
        });
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s);
        let a = read(&mut r).unwrap().unwrap();
        assert_eq!(
            (a.request_line(), a.body.as_slice()),
            (("PUT", "/a"), &b"abc"[..])
        );
        let b = read(&mut r).unwrap().unwrap();
        assert_eq!((b.request_line(), b.body.len()), (("GET", "/b"), 0));
        assert!(read(&mut r).is_err());
        t.join().unwrap();
    }
}
