//! The uwsgi protocol's request packet, as Apache's mod_proxy_uwsgi sends it to a uWSGI
//! `--socket`: decoded into a request head, so a service behind Apache is read like one spoken
//! to in HTTP. The response on such a socket is plain HTTP already.
//!
//! Packet (uWSGI docs, "The uwsgi protocol"): `modifier1: u8`, `datasize: u16 le`,
//! `modifier2: u8`, then `datasize` bytes of vars, each `keysize: u16 le, key, valsize: u16 le,
//! val`. modifier1 0 carries WSGI/CGI vars; the request body (CONTENT_LENGTH bytes) follows.
use super::head::{Fields, Head, HeadParse, StartLine};

/// Bytes of the packet header.
const HEADER: usize = 4;

/// Whether a request direction begins with a uwsgi packet rather than a request line: modifier1
/// 0 (WSGI vars). A request line never begins with a NUL byte.
pub fn is_packet_start(buf: &[u8]) -> bool {
    buf.first() == Some(&0)
}

/// A CGI var name: upper-case letters, digits, `_` and `.` (uWSGI's own `UWSGI_*` too).
fn is_var_name(k: &[u8]) -> bool {
    !k.is_empty()
        && k.iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.'))
}

/// `HTTP_X_AUTH_TOKEN` -> `X-Auth-Token` (CGI/1.1, RFC 3875 §4.1.18: meta-variables from header
/// fields, `-` turned into `_`, upper-cased; the original case is lost).
fn header_name(var: &str) -> String {
    var.split('_')
        .map(|w| {
            let mut s = w.to_ascii_lowercase();
            if let Some(c) = s.get_mut(..1) {
                c.make_ascii_uppercase();
            }
            s
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn u16_le(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize)
}

/// Parses a uwsgi request packet at the start of `buf` into a request head: REQUEST_METHOD,
/// REQUEST_URI (else SCRIPT_NAME + PATH_INFO + `?` QUERY_STRING) and SERVER_PROTOCOL make the
/// request line; HTTP_* vars, CONTENT_TYPE and CONTENT_LENGTH the header fields (so the body is
/// framed by CONTENT_LENGTH); the other vars stay in [`Head::cgi`]. `len` is the packet's size.
pub fn parse_packet(buf: &[u8]) -> HeadParse {
    if buf.len() < HEADER {
        return HeadParse::Partial;
    }
    if buf[0] != 0 {
        return HeadParse::Invalid("uwsgi packet: not a vars packet (modifier1)");
    }
    let size = u16::from_le_bytes([buf[1], buf[2]]) as usize;
    if buf[3] != 0 || size < 4 {
        return HeadParse::Invalid("uwsgi packet: bad header");
    }
    let len = HEADER + size;
    // The first var's name tells garbage from a packet early, before the whole packet came.
    if let Some(k) = u16_le(buf, HEADER) {
        let seen = &buf[(HEADER + 2).min(buf.len())..buf.len().min(HEADER + 2 + k)];
        if k == 0 || k > size || !(seen.is_empty() || is_var_name(seen)) {
            return HeadParse::Invalid("uwsgi packet: bad var name");
        }
    }
    if buf.len() < len {
        return HeadParse::Partial;
    }
    let data = &buf[HEADER..len];
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let Some(k) = u16_le(data, at) else {
            return HeadParse::Invalid("uwsgi packet: var cut at the end");
        };
        let key = &data[(at + 2).min(data.len())..(at + 2 + k).min(data.len())];
        let Some(v) = u16_le(data, at + 2 + k) else {
            return HeadParse::Invalid("uwsgi packet: var cut at the end");
        };
        let vstart = at + 4 + k;
        if key.len() != k || vstart + v > data.len() {
            return HeadParse::Invalid("uwsgi packet: var runs past the packet");
        }
        if !is_var_name(key) {
            return HeadParse::Invalid("uwsgi packet: bad var name");
        }
        let val = String::from_utf8_lossy(&data[vstart..vstart + v]).into_owned();
        vars.push((String::from_utf8_lossy(key).into_owned(), val));
        at = vstart + v;
    }
    let var = |name: &str| {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(method) = var("REQUEST_METHOD").filter(|m| !m.is_empty()) else {
        return HeadParse::Invalid("uwsgi packet without REQUEST_METHOD");
    };
    let target = var("REQUEST_URI")
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let mut t = format!(
                "{}{}",
                var("SCRIPT_NAME").unwrap_or(""),
                var("PATH_INFO").unwrap_or("")
            );
            if t.is_empty() {
                t.push('/');
            }
            if let Some(q) = var("QUERY_STRING").filter(|q| !q.is_empty()) {
                t.push('?');
                t.push_str(q);
            }
            t
        });
    let version = match var("SERVER_PROTOCOL") {
        Some("HTTP/1.0") => 0,
        _ => 1,
    };
    let start = StartLine::Request {
        method: super::head::method(method),
        target,
        version,
    };
    let mut headers = Fields::default();
    let mut cgi = Vec::new();
    for (k, v) in vars {
        let name = match k.as_str() {
            "CONTENT_TYPE" | "CONTENT_LENGTH" => Some(header_name(&k)),
            _ => k.strip_prefix("HTTP_").map(header_name),
        };
        match name {
            Some(name) if !(name == "Content-Length" && v.is_empty()) => {
                headers.push(&name, v.as_bytes())
            }
            Some(_) => {}
            None => cgi.push((k, v)),
        }
    }
    HeadParse::Complete(Head {
        start,
        headers,
        len,
        cgi,
    })
}

/// Where a complete uwsgi request packet begins in `buf` after its first byte, for
/// resynchronising: a NUL-headed packet that parses whole, with a REQUEST_METHOD.
pub fn find_packet(buf: &[u8]) -> Option<usize> {
    (1..buf.len().saturating_sub(HEADER)).find(|&i| {
        buf[i] == 0 && buf[i + 3] == 0 && matches!(parse_packet(&buf[i..]), HeadParse::Complete(_))
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A packet of `vars`, as mod_proxy_uwsgi writes it.
    pub fn packet(vars: &[(&str, &str)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (k, v) in vars {
            data.extend_from_slice(&(k.len() as u16).to_le_bytes());
            data.extend_from_slice(k.as_bytes());
            data.extend_from_slice(&(v.len() as u16).to_le_bytes());
            data.extend_from_slice(v.as_bytes());
        }
        let mut p = vec![0];
        p.extend_from_slice(&(data.len() as u16).to_le_bytes());
        p.push(0);
        p.extend_from_slice(&data);
        p
    }

    pub const KEYSTONE_POST: &[(&str, &str)] = &[
        ("REQUEST_METHOD", "POST"),
        ("REQUEST_URI", "/identity/v3/auth/tokens"),
        ("SCRIPT_NAME", "/identity"),
        ("PATH_INFO", "/v3/auth/tokens"),
        ("QUERY_STRING", ""),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("HTTP_HOST", "127.0.0.1"),
        (
            "HTTP_USER_AGENT",
            "openstacksdk/4.22.0 keystoneauth1/5.18.1",
        ),
        ("CONTENT_TYPE", "application/json"),
        ("CONTENT_LENGTH", "2"),
        ("HTTP_X_AUTH_TOKEN", "gAAAA"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40312"),
    ];

    #[test]
    fn a_keystone_packet_is_a_request_head() {
        let p = packet(KEYSTONE_POST);
        let HeadParse::Complete(h) = parse_packet(&p) else {
            panic!("not parsed");
        };
        assert_eq!(h.len, p.len());
        assert_eq!(
            h.start,
            StartLine::Request {
                method: "POST".into(),
                target: "/identity/v3/auth/tokens".into(),
                version: 1
            }
        );
        let names: Vec<&str> = h.headers.iter().map(|h| h.name).collect();
        assert_eq!(
            names,
            [
                "Host",
                "User-Agent",
                "Content-Type",
                "Content-Length",
                "X-Auth-Token"
            ]
        );
        assert_eq!(h.header("content-length"), Some(&b"2"[..]));
        assert_eq!(h.cgi_var("SCRIPT_NAME"), Some("/identity"));
        assert_eq!(
            h.cgi_var("HTTP_HOST"),
            None,
            "a header field, not a CGI var"
        );
        assert!(h.cgi.contains(&("REMOTE_PORT".into(), "40312".into())));
    }

    #[test]
    fn every_prefix_is_partial_and_garbage_is_invalid() {
        let p = packet(KEYSTONE_POST);
        for cut in 0..p.len() {
            assert_eq!(parse_packet(&p[..cut]), HeadParse::Partial, "cut at {cut}");
        }
        // A var whose value runs past the packet's end.
        let mut bad = packet(&[("REQUEST_METHOD", "GET")]);
        let n = bad.len();
        bad[n - 5] = 200;
        assert!(matches!(parse_packet(&bad), HeadParse::Invalid(_)));
        // Lower-case var names: not a uwsgi vars packet, told at the first var.
        assert!(matches!(
            parse_packet(b"\x00\x20\x00\x00\x05\x00hello"),
            HeadParse::Invalid(_)
        ));
        assert!(matches!(
            parse_packet(&packet(&[("PATH_INFO", "/")])),
            HeadParse::Invalid("uwsgi packet without REQUEST_METHOD")
        ));
    }

    #[test]
    fn target_from_script_name_path_info_and_query() {
        let p = packet(&[
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", "/image"),
            ("PATH_INFO", "/v2/images"),
            ("QUERY_STRING", "limit=2"),
            ("SERVER_PROTOCOL", "HTTP/1.0"),
        ]);
        let HeadParse::Complete(h) = parse_packet(&p) else {
            panic!()
        };
        assert_eq!(
            h.start,
            StartLine::Request {
                method: "GET".into(),
                target: "/image/v2/images?limit=2".into(),
                version: 0
            }
        );
    }

    #[test]
    fn a_packet_is_found_after_garbage() {
        let mut buf = b"\x00\x01garbage\x00".to_vec();
        let at = buf.len();
        buf.extend(packet(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/")]));
        assert_eq!(find_packet(&buf), Some(at));
        assert_eq!(find_packet(&buf[..buf.len() - 1]), None);
    }
}
