//! Which local process owns a TCP socket, for the end of an exchange that is not traced: the
//! server listening on a port, or the client behind a peer address.
//!
//! Read from sock_diag (socket inode by address and state; /proc/net/tcp{,6} if that fails)
//! and /proc/*/fd (inode -> process). A full scan costs milliseconds, so it is redone only on a
//! miss, at most once per [`MIN_REFRESH`]; in between, a miss rereads the fds of the processes
//! known to hold sockets, at most once per [`MIN_QUICK_REFRESH`].
use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use sniffer_common::connectors::{Connector, TcpKey, WAYS, find, plain, slot_of};

use crate::procs::{Proc, parse_cmdline, parse_stat};

/// The kernel's table of the untraced processes that connected
/// (`sniffer_common::connectors`): one slot by its index.
pub trait ConnectorTable {
    fn slot(&self, index: u32) -> Option<Connector>;
}

/// Fewest time between two scans of /proc.
pub const MIN_REFRESH: Duration = Duration::from_millis(500);
/// Fewest time between two quick scans (the socket tables, and the fds of the processes that
/// held sockets at the last full scan: a proxy's workers open a socket per request).
pub const MIN_QUICK_REFRESH: Duration = Duration::from_millis(20);

const TCP_LISTEN: u8 = 0x0A;

/// One line of /proc/net/tcp or tcp6: (local, remote, state, inode).
pub fn parse_proc_net_line(line: &str) -> Option<(SocketAddr, SocketAddr, u8, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return None;
    }
    let local = parse_hex_addr(f[1])?;
    let remote = parse_hex_addr(f[2])?;
    let state = u8::from_str_radix(f[3], 16).ok()?;
    let inode = f[9].parse().ok()?;
    Some((local, remote, state, inode))
}

/// `0100007F:1F90` (IPv4, one little-endian word) or 32 hex digits in four little-endian words
/// (IPv6), then the port in big-endian hex.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let v = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(v.to_le_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b)).to_canonical()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[derive(Debug, Default)]
struct Snapshot {
    /// Listening sockets: (address, inode).
    listening: Vec<(SocketAddr, u64)>,
    /// Connected sockets (established or closing) by local address.
    connected: HashMap<SocketAddr, u64>,
    /// Socket inode -> pid.
    owner: HashMap<u64, u32>,
}

#[derive(Debug, Default)]
pub struct Owners {
    snap: Snapshot,
    scanned: Option<Instant>,
    quick_scanned: Option<Instant>,
    /// For lookups of one socket by its addresses, opened at the first; `Some(None)` once the
    /// kernel showed it cannot answer them (no TCP handler), so the tables are read instead.
    diag: Option<Option<crate::sockdiag::Diag>>,
    /// The kernel's table of who connected, when the programs are loaded.
    connectors: Option<Box<dyn ConnectorTable>>,
}

impl std::fmt::Debug for dyn ConnectorTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectorTable")
    }
}

/// An address as the table keeps it: IPv4 in the first 4 bytes, IPv6 whole.
fn key_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&v4.octets());
            a
        }
        IpAddr::V6(v6) => plain(v6.octets()),
    }
}

/// The table's key of the connection from `client` to `server` in namespace `netns`.
fn tcp_key(netns: u32, client: SocketAddr, server: SocketAddr) -> TcpKey {
    TcpKey {
        netns,
        sport: client.port(),
        dport: server.port(),
        saddr: key_addr(client.ip()),
        daddr: key_addr(server.ip()),
    }
}

impl Owners {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads who connected from the kernel's table from now on.
    pub fn set_connectors(&mut self, table: Box<dyn ConnectorTable>) {
        self.connectors = Some(table);
    }

    /// The untraced process the kernel saw connect from `client` to `server` in network
    /// namespace `netns` (a server can accept before its client's connect returns, and then
    /// its accept found nothing; by the time a connection is named, the connect has returned).
    pub fn connector(&self, netns: u32, client: SocketAddr, server: SocketAddr) -> Option<u32> {
        let table = self.connectors.as_ref()?;
        let key = tcp_key(netns, client, server);
        let (first, check) = slot_of(&key);
        let set = [table.slot(first)?, table.slot(first + WAYS - 1)?];
        find(&set, &key, check)
    }

    /// Rereads who holds which socket, and the socket tables too unless `tables` is false (the
    /// caller knows the inode it wants).
    fn refresh(&mut self, tables: bool) {
        if self.scanned.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
            self.quick_refresh(tables);
            return;
        }
        self.scanned = Some(Instant::now());
        let mut snap = self.fresh_snapshot(tables);
        if let Ok(dir) = fs::read_dir("/proc") {
            for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
                read_fds(pid, &mut snap);
            }
        }
        tracing::debug!(
            listening = snap.listening.len(),
            connected = snap.connected.len(),
            sockets = snap.owner.len(),
            "scanned /proc for socket owners"
        );
        self.snap = snap;
    }

    /// A snapshot to fill with processes' fds: the socket tables read again, or (`tables`
    /// false) carried over from the last one.
    fn fresh_snapshot(&mut self, tables: bool) -> Snapshot {
        let mut snap = Snapshot::default();
        if tables {
            read_tables(&mut snap);
        } else {
            snap.listening = std::mem::take(&mut self.snap.listening);
            snap.connected = std::mem::take(&mut self.snap.connected);
        }
        snap
    }

    /// Between full scans: the socket tables again, and the fds of the processes known to
    /// hold sockets.
    fn quick_refresh(&mut self, tables: bool) {
        if self
            .quick_scanned
            .is_some_and(|t| t.elapsed() < MIN_QUICK_REFRESH)
        {
            return;
        }
        self.quick_scanned = Some(Instant::now());
        let mut pids: Vec<u32> = self.snap.owner.values().copied().collect();
        pids.sort_unstable();
        pids.dedup();
        let mut snap = self.fresh_snapshot(tables);
        for pid in pids {
            read_fds(pid, &mut snap);
        }
        tracing::debug!(sockets = snap.owner.len(), "quick scan for socket owners");
        // Keep what the full scan knew of processes not read again.
        for (inode, pid) in std::mem::take(&mut self.snap.owner) {
            snap.owner.entry(inode).or_insert(pid);
        }
        self.snap = snap;
    }
}

/// The listening and connected TCP sockets, from sock_diag (live ones only), else from
/// /proc/net/tcp{,6}.
fn read_tables(snap: &mut Snapshot) {
    let mut add = |local: SocketAddr, state: u8, inode: u64| match state {
        TCP_LISTEN => snap.listening.push((local, inode)),
        // Closing sockets (CLOSE_WAIT, FIN_WAIT...) still belong to their process; TIME_WAIT
        // ones (inode 0) no longer do.
        _ if inode != 0 => {
            snap.connected.insert(local, inode);
        }
        _ => {}
    };
    match crate::sockdiag::tcp_sockets() {
        Ok(all) => {
            for (local, state, inode) in all {
                add(local, state, inode);
            }
            return;
        }
        Err(e) => tracing::debug!("sock_diag: {e}; reading /proc/net/tcp"),
    }
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for (local, _, state, inode) in text.lines().skip(1).filter_map(parse_proc_net_line) {
            add(local, state, inode);
        }
    }
}

/// The socket inodes among the fds of `pid`.
fn read_fds(pid: u32, snap: &mut Snapshot) {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return;
    };
    for fd in fds.flatten() {
        if let Some(inode) = fs::read_link(fd.path())
            .ok()
            .and_then(|l| socket_inode(l.to_str()?))
        {
            snap.owner.entry(inode).or_insert(pid);
        }
    }
}

impl Owners {
    fn listener_in_snapshot(&self, addr: SocketAddr) -> Option<u32> {
        self.snap
            .listening
            .iter()
            .filter(|(l, _)| l.port() == addr.port())
            .find(|(l, _)| l.ip() == addr.ip() || l.ip().is_unspecified())
            .and_then(|(_, inode)| self.snap.owner.get(inode).copied())
    }

    /// The process listening on `addr` (its exact address, or the wildcard).
    pub fn listener(&mut self, addr: SocketAddr) -> Option<u32> {
        if let Some(pid) = self.listener_in_snapshot(addr) {
            return Some(pid);
        }
        self.refresh(true);
        self.listener_in_snapshot(addr)
    }

    /// The process whose connected (or closing) socket has local address `addr`.
    pub fn owner(&mut self, addr: SocketAddr) -> Option<u32> {
        let find = |s: &Snapshot| s.connected.get(&addr).and_then(|i| s.owner.get(i)).copied();
        if let Some(pid) = find(&self.snap) {
            return Some(pid);
        }
        self.refresh(true);
        find(&self.snap)
    }

    /// The process holding the TCP socket from `local` to `remote`. The socket is looked up by
    /// its two addresses (one sock_diag request), so a miss rereads processes' fds but not the
    /// socket tables: under connection churn a table dump walks every socket, TIME_WAIT ones
    /// included, and cost a third of sniffer's time at 10k connections/s.
    pub fn owner_of(&mut self, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
        let diag = self.diag.get_or_insert_with(|| {
            crate::sockdiag::Diag::open()
                .inspect_err(|e| {
                    tracing::debug!("sock_diag lookups: {e}; reading the socket tables")
                })
                .ok()
        });
        let Some(diag) = diag else {
            return self.owner(local);
        };
        let inode = match diag.tcp_inode(local, remote) {
            Ok(inode) => inode?,
            Err(e) => {
                tracing::debug!("sock_diag lookup: {e}; reading the socket tables");
                return self.owner(local);
            }
        };
        if let Some(&pid) = self.snap.owner.get(&inode) {
            return Some(pid);
        }
        self.refresh(false);
        self.snap.owner.get(&inode).copied()
    }
}

/// What /proc says of a process we do not trace.
pub fn read_proc(pid: u32) -> Option<Proc> {
    let (comm, ppid) = parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| parse_cmdline(&b))
        .unwrap_or_default();
    Some(Proc {
        pid,
        ppid,
        comm,
        cmdline,
        exit_code: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_proc_net_line(v4),
            Some((
                "127.0.0.1:8080".parse().unwrap(),
                "0.0.0.0:0".parse().unwrap(),
                TCP_LISTEN,
                123456
            ))
        );
        let v6 = "   1: 00000000000000000000000001000000:1388 00000000000000000000000001000000:9C40 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            parse_proc_net_line(v6),
            Some((
                "[::1]:5000".parse().unwrap(),
                "[::1]:40000".parse().unwrap(),
                0x01,
                777
            ))
        );
        let mapped = "   2: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 9 1";
        assert_eq!(
            parse_proc_net_line(mapped).map(|l| l.0),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse_proc_net_line("  sl  local_address rem_address   st"),
            None
        );
    }

    /// The kernel's table in memory, written as the connect exit writes it.
    struct Table(Vec<Connector>);

    impl Table {
        fn new() -> Self {
            Self(vec![
                Connector::EMPTY;
                sniffer_common::maps::CONNECTORS_CAPACITY as usize
            ])
        }

        /// As `callers::connected` does: the set's older slot takes the write.
        fn connect(&mut self, key: TcpKey, tgid: u32, at: u64) {
            let (first, check) = slot_of(&key);
            let at_of = |i: u32| self.0[i as usize].at;
            let way = sniffer_common::connectors::way_to_write([at_of(first), at_of(first + 1)]);
            self.0[(first + way) as usize] = Connector {
                key,
                tgid,
                check: check ^ tgid,
                at,
            };
        }
    }

    impl ConnectorTable for Table {
        fn slot(&self, index: u32) -> Option<Connector> {
            self.0.get(index as usize).copied()
        }
    }

    #[test]
    fn the_kernels_table_names_who_connected_and_a_mixed_slot_names_no_one() {
        let (client, server): (SocketAddr, SocketAddr) = (
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:9292".parse().unwrap(),
        );
        // As the kernel writes it for a dual-stack client: the IPv4-mapped form made plain.
        let key = TcpKey {
            saddr: key_addr("::ffff:127.0.0.1".parse().unwrap()),
            ..tcp_key(7, client, server)
        };
        let mut table = Table::new();
        table.connect(key, 4242, 1);
        let mut o = Owners::new();
        assert_eq!(o.connector(7, client, server), None, "no table yet");
        o.set_connectors(Box::new(table));
        assert_eq!(o.connector(7, client, server), Some(4242));
        assert_eq!(o.connector(8, client, server), None, "another namespace");
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(o.connector(7, other, server), None, "another connection");
        // Another write's process with this connection: the check does not hold.
        let mut table = Table::new();
        table.connect(key, 4242, 1);
        let (first, _) = slot_of(&key);
        table.0[first as usize].tgid = 99;
        o.set_connectors(Box::new(table));
        assert_eq!(o.connector(7, client, server), None);
    }

    #[test]
    fn a_connect_stays_in_the_table_until_two_later_ones_share_its_set() {
        let server: SocketAddr = "127.0.0.1:9292".parse().unwrap();
        // Three clients whose connections hash to one set.
        let first = |c: SocketAddr| slot_of(&tcp_key(1, c, server)).0;
        let set = first("127.0.0.1:40000".parse().unwrap());
        let candidates = (1..=254u8).flat_map(|host| {
            (40001..40100u16).map(move |p| SocketAddr::from(([127, 0, 0, host], p)))
        });
        let same: Vec<SocketAddr> = candidates.filter(|c| first(*c) == set).take(2).collect();
        assert_eq!(same.len(), 2, "two more clients of the set");
        let clients = ["127.0.0.1:40000".parse().unwrap(), same[0], same[1]];
        let client = |i: usize| clients[i];
        let mut table = Table::new();
        table.connect(tcp_key(1, client(0), server), 100, 10);
        table.connect(tcp_key(1, client(1), server), 101, 20);
        let mut o = Owners::new();
        o.set_connectors(Box::new(table));
        // A table of one slot per set had lost the first.
        assert_eq!(o.connector(1, client(0), server), Some(100));
        assert_eq!(o.connector(1, client(1), server), Some(101));

        let mut table = Table::new();
        for i in 0..3 {
            table.connect(
                tcp_key(1, client(i), server),
                100 + i as u32,
                10 * (i as u64 + 1),
            );
        }
        o.set_connectors(Box::new(table));
        assert_eq!(o.connector(1, client(0), server), None, "the oldest went");
        assert_eq!(o.connector(1, client(1), server), Some(101));
        assert_eq!(o.connector(1, client(2), server), Some(102));
    }

    #[test]
    fn of_two_slots_holding_one_connection_the_newer_names_it() {
        // A client port reused for the same server: the later connect's process.
        let (client, server): (SocketAddr, SocketAddr) = (
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:9292".parse().unwrap(),
        );
        let mut table = Table::new();
        table.connect(tcp_key(1, client, server), 100, 10);
        table.connect(tcp_key(1, client, server), 200, 20);
        let mut o = Owners::new();
        o.set_connectors(Box::new(table));
        assert_eq!(o.connector(1, client, server), Some(200));
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[42]"), Some(42));
        assert_eq!(socket_inode("pipe:[42]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn finds_this_process_listening() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut o = Owners::new();
        assert_eq!(o.listener(addr), Some(std::process::id()));
        let c = std::net::TcpStream::connect(addr).unwrap();
        let local = c.local_addr().unwrap();
        // Within MIN_REFRESH of the last full scan, a miss rereads the fds of the processes
        // known to hold sockets: this one, with its new socket.
        assert_eq!(o.owner(local), Some(std::process::id()));
        assert!(o.quick_scanned.is_some());
    }
}

#[cfg(test)]
mod other_process_tests {
    use super::*;

    #[test]
    fn finds_another_process_connected() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut child = std::process::Command::new("python3")
            .args(["-c", &format!("import socket,time,sys\ns=socket.create_connection(('127.0.0.1',{port}))\nprint(s.getsockname()[1], flush=True)\ntime.sleep(3)")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let local: SocketAddr = format!("127.0.0.1:{}", line.trim()).parse().unwrap();
        let mut o = Owners::new();
        let got = o.owner(local);
        // By its two addresses, with a fresh table: no socket table read.
        let mut fresh = Owners::new();
        let by_pair = fresh.owner_of(local, l.local_addr().unwrap());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(got, Some(child.id()), "{:?}", o.snap.connected.get(&local));
        assert_eq!(by_pair, Some(child.id()));
        assert!(fresh.snap.connected.is_empty(), "the tables were not read");
    }
}
