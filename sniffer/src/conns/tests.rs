use std::net::SocketAddr;

use sniffer_common::Syscall;

use super::*;

#[derive(Default)]
struct Record {
    log: Vec<String>,
}

impl ConnSink for Record {
    fn opened(&mut self, c: &Conn, _: &ProcTable) {
        self.log
            .push(format!("open #{} {} -> {}", c.id, c.local, c.peer));
    }
    fn pieces(&mut self, c: &Conn, dir: Dir, pieces: &[Piece], _: &ProcTable) {
        for p in pieces {
            match p {
                Piece::Data { off, bytes, .. } => self.log.push(format!(
                    "#{} {} @{off} {:?}",
                    c.id,
                    dir.name(),
                    String::from_utf8_lossy(bytes)
                )),
                Piece::Gap { off, len, kind, .. } => self.log.push(format!(
                    "#{} {} @{off} gap {len} {kind:?}",
                    c.id,
                    dir.name()
                )),
            }
        }
    }
    fn ended(&mut self, c: &Conn, _: &ProcTable) {
        self.log
            .push(format!("end #{} {:?}", c.id, c.ended.map(|e| e.1)));
    }
}

pub(crate) fn sock(fd: i32, sk: u64, sent: u64, received: u64) -> SockInfo {
    SockInfo {
        ts_ns: 1,
        tgid: 7,
        tid: 7,
        fd,
        sk,
        peer_sk: 0,
        peer_tgid: 0,
        netns: 0,
        role: Role::Client,
        transport: Transport::Tcp,
        local: Endpoint::Inet("127.0.0.1:40000".parse::<SocketAddr>().unwrap()),
        peer: Endpoint::Inet("127.0.0.1:8000".parse::<SocketAddr>().unwrap()),
        sent,
        received,
        tls_sent: 0,
        tls_received: 0,
    }
}

pub(crate) fn chunk(fd: i32, sk: u64, dir: Dir, off: u64, data: &[u8]) -> Chunk<'_> {
    Chunk {
        ts_ns: 2,
        tgid: 7,
        tid: 7,
        fd,
        sk,
        dir,
        syscall: Syscall::Write,
        off,
        len: data.len() as u64,
        syscall_len: data.len() as u64,
        data,
        tls: Tls::No,
    }
}

#[test]
fn open_data_close_with_lost_tail() {
    let mut t = ConnTable::new();
    let mut r = Record::default();
    t.open(&sock(3, 0xa, 0, 0), &mut r, &ProcTable::new());
    t.data(
        chunk(3, 0xa, Dir::Send, 0, b"GET / HTTP/1.1\r\n\r\n"),
        &mut r,
        &ProcTable::new(),
    );
    t.data(
        chunk(3, 0xa, Dir::Recv, 0, b"HTTP/1.1 200 OK\r\n"),
        &mut r,
        &ProcTable::new(),
    );
    // The kernel says 20 bytes were received in all: 3 were lost at the end.
    t.close(&sock(3, 0xa, 18, 20), &mut r, &ProcTable::new());
    assert_eq!(
        r.log,
        vec![
            "open #1 127.0.0.1:40000 -> 127.0.0.1:8000",
            "#1 send @0 \"GET / HTTP/1.1\\r\\n\\r\\n\"",
            "#1 recv @0 \"HTTP/1.1 200 OK\\r\\n\"",
            "#1 recv @17 gap 3 Lost",
            "end #1 Some(Closed)",
        ]
    );
    assert!(t.is_empty());
}

#[test]
fn fd_reused_for_another_socket_starts_a_new_connection() {
    let mut t = ConnTable::new();
    let mut r = Record::default();
    t.open(&sock(3, 0xa, 0, 0), &mut r, &ProcTable::new());
    t.data(chunk(3, 0xa, Dir::Send, 0, b"a"), &mut r, &ProcTable::new());
    t.open(&sock(3, 0xb, 0, 0), &mut r, &ProcTable::new());
    t.data(chunk(3, 0xb, Dir::Send, 0, b"b"), &mut r, &ProcTable::new());
    assert_eq!(
        r.log,
        vec![
            "open #1 127.0.0.1:40000 -> 127.0.0.1:8000",
            "#1 send @0 \"a\"",
            "end #1 Some(Replaced)",
            "open #2 127.0.0.1:40000 -> 127.0.0.1:8000",
            "#2 send @0 \"b\"",
        ]
    );
}

#[test]
fn data_without_open_keeps_bytes_and_counts_the_lost_open() {
    let mut t = ConnTable::new();
    let mut r = Record::default();
    t.data(chunk(4, 0xc, Dir::Recv, 0, b"x"), &mut r, &ProcTable::new());
    assert_eq!(r.log, vec!["open #1 ? -> ?", "#1 recv @0 \"x\""]);
    assert_eq!(t.opens_lost, 1);
    assert!(t.get(7, 4).unwrap().open_lost);
}

#[test]
fn past_the_cap_the_idlest_connection_is_let_go() {
    let mut t = ConnTable::new().with_max_conns(2);
    let mut r = Record::default();
    let p = ProcTable::new();
    t.open(&sock(3, 0xa, 0, 0), &mut r, &p);
    t.open(&sock(4, 0xb, 0, 0), &mut r, &p);
    t.data(chunk(3, 0xa, Dir::Send, 0, b"busy"), &mut r, &p);
    t.open(&sock(5, 0xc, 0, 0), &mut r, &p);
    assert_eq!(t.len(), 2);
    assert_eq!(t.evicted, 1);
    assert!(t.get(7, 4).is_none(), "fd 4 was the idlest");
    assert!(
        r.log.contains(&"end #2 Some(Evicted)".to_owned()),
        "{:?}",
        r.log
    );
}

#[test]
fn exit_ends_connections_at_kernel_offsets() {
    let mut t = ConnTable::new();
    let mut r = Record::default();
    t.open(&sock(3, 0xa, 0, 0), &mut r, &ProcTable::new());
    t.data(
        chunk(3, 0xa, Dir::Send, 0, b"abc"),
        &mut r,
        &ProcTable::new(),
    );
    let finals = [FinalOffsets {
        tgid: 7,
        fd: 3,
        sk: 0xa,
        sent: 5,
        received: 0,
        tls_sent: 0,
        tls_received: 0,
    }];
    t.exit(7, 9, &finals, &mut r, &ProcTable::new());
    assert_eq!(r.log[2], "#1 send @3 gap 2 Lost");
    assert_eq!(r.log[3], "end #1 Some(ProcessExit)");
}

fn tls_chunk(dir: Dir, off: u64, data: &[u8], tls: Tls) -> Chunk<'_> {
    Chunk {
        tls,
        ..chunk(3, 0xa, dir, off, data)
    }
}

#[test]
fn tls_ciphertext_is_counted_and_the_plaintext_is_the_stream() {
    let mut t = ConnTable::new();
    let mut r = Record::default();
    let p = ProcTable::new();
    t.open(&sock(3, 0xa, 0, 0), &mut r, &p);
    // The handshake on the wire, flagged by the kernel: counted only.
    t.data(
        tls_chunk(Dir::Send, 0, &[22, 3, 1, 0, 5], Tls::Ciphertext),
        &mut r,
        &p,
    );
    t.data(
        tls_chunk(Dir::Recv, 0, &[0; 100], Tls::Ciphertext),
        &mut r,
        &p,
    );
    // The plaintext from the library, at its own offsets.
    t.data(
        tls_chunk(Dir::Send, 0, b"GET / ", Tls::Plaintext),
        &mut r,
        &p,
    );
    t.data(
        tls_chunk(Dir::Send, 6, b"HTTP/1.1", Tls::Plaintext),
        &mut r,
        &p,
    );
    let c = t.get(7, 3).unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.ciphertext, [100, 5]);
    assert!(tls.read);
    assert_eq!(c.streams[Dir::Send.index()].stats.bytes, 14);
    assert_eq!(
        r.log,
        [
            "open #1 127.0.0.1:40000 -> 127.0.0.1:8000",
            "#1 send @0 \"GET / \"",
            "#1 send @6 \"HTTP/1.1\""
        ]
    );
    // The close carries both kinds of offsets: the streams end at the plaintext's.
    let mut s = sock(3, 0xa, 105, 100);
    s.tls_sent = 14;
    t.close(&s, &mut r, &p);
    assert_eq!(r.log.last().unwrap(), "end #1 Some(Closed)");
    assert_eq!(
        r.log.len(),
        4,
        "no gap up to the ciphertext's length: {:?}",
        r.log
    );
}

#[test]
fn tls_on_the_wire_without_the_library_is_recognised_and_counted() {
    let mut t = ConnTable::new();
    let mut r = Record::default();
    let p = ProcTable::new();
    t.open(&sock(3, 0xa, 0, 0), &mut r, &p);
    // A ClientHello the kernel did not flag (no library probed): never parsed as HTTP.
    t.data(
        tls_chunk(Dir::Send, 0, &[22, 3, 1, 2, 0, 1], Tls::No),
        &mut r,
        &p,
    );
    t.data(
        tls_chunk(Dir::Recv, 0, &[22, 3, 3, 0, 7], Tls::No),
        &mut r,
        &p,
    );
    t.data(
        tls_chunk(Dir::Send, 6, b"GET / HTTP/1.1", Tls::No),
        &mut r,
        &p,
    );
    let c = t.get(7, 3).unwrap();
    assert_eq!(c.tls.unwrap().ciphertext, [5, 20]);
    assert!(!c.tls.unwrap().read);
    assert_eq!(r.log, ["open #1 127.0.0.1:40000 -> 127.0.0.1:8000"]);
}

#[test]
fn a_connection_that_is_not_http_is_set_aside_and_the_kernel_told() {
    let mut t = ConnTable::new();
    let mut r = Record::default();
    let p = ProcTable::new();
    t.open(&sock(3, 0xa, 0, 0), &mut r, &p);
    t.data(
        chunk(3, 0xa, Dir::Send, 0, b"*3\r\n$3\r\nSET\r\n"),
        &mut r,
        &p,
    );
    t.data(chunk(3, 0xa, Dir::Recv, 0, b"+OK\r\n"), &mut r, &p);
    let c = t.get(7, 3).unwrap();
    assert_eq!(c.not_http, Some(Protocol::Redis));
    assert_eq!(
        r.log,
        ["open #1 127.0.0.1:40000 -> 127.0.0.1:8000"],
        "nothing delivered"
    );
    assert_eq!(t.set_aside.get(&Protocol::Redis), Some(&1));
    let dirs: Vec<u32> = t.hints.iter().map(|h| h.dir).collect();
    assert_eq!(dirs, [kernel_dir::RECV, kernel_dir::SEND]);
    for h in &t.hints {
        let ctl = h.ctl.unwrap();
        assert_eq!((h.tgid, h.fd, ctl.sk), (7, 3, 0xa));
        assert_eq!(ctl.flags, copy_flags::IGNORE);
    }
    // Its close: no gap reported, the totals kept.
    t.close(&sock(3, 0xa, 14, 5), &mut r, &p);
    assert_eq!(r.log.last().unwrap(), "end #1 Some(Closed)");
    assert_eq!(r.log.len(), 2);
}

#[test]
fn an_older_connection_is_set_aside_only_on_sure_grounds() {
    let mut t = ConnTable::new();
    let mut r = Record::default();
    let p = ProcTable::new();
    let mut s = sock(3, 0xa, 0, 0);
    s.role = Role::Unknown;
    t.open(&s, &mut r, &p);
    // The middle of some binary body: could be anything, HTTP included. Read on.
    t.data(
        chunk(3, 0xa, Dir::Recv, 0, &[0x89, b'P', b'N', b'G']),
        &mut r,
        &p,
    );
    assert_eq!(t.get(7, 3).unwrap().not_http, None);
    assert!(t.hints.is_empty());
}

#[test]
fn plain_http_is_not_taken_for_tls() {
    assert!(!starts_tls_record(b"GET / HTTP/1.1"));
    assert!(!starts_tls_record(b"HTTP/1.1 200 OK"));
    assert!(!starts_tls_record(&[22, 2, 0]));
    assert!(!starts_tls_record(&[24, 3, 1]));
    assert!(starts_tls_record(&[23, 3, 3, 0, 40]));
    assert!(!starts_tls_record(&[22]));
}
