//! The host's live TCP sockets from the kernel's sock_diag netlink interface (inet_diag, as
//! `ss` reads them): local address, state and inode, without the TIME_WAIT sockets that make
//! /proc/net/tcp huge under connection churn (a million lines after a minute of 16k conn/s).
use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// linux/sock_diag.h, linux/inet_diag.h, linux/netlink.h.
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// struct inet_diag_msg: family, state, timer, retrans, sockid (48), expires, rqueue, wqueue,
/// uid, inode.
const DIAG_MSG_LEN: usize = 72;

/// TCP states (include/net/tcp_states.h) wanted: every live one, not TIME_WAIT (6) nor CLOSE (7).
pub const LIVE_STATES: u32 = (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11);

/// One socket: local address, TCP state, inode.
pub type DiagSocket = (SocketAddr, u8, u64);

/// TCP_LISTEN alone: the smallest dump that still needs the TCP handler.
const LISTEN_ONLY: u32 = 1 << 10;

/// The request: nlmsghdr + struct inet_diag_req_v2 (family, protocol, ext, pad, states, a zero
/// sockid), in native byte order as netlink wants.
fn request(family: u8, states: u32, seq: u32) -> Vec<u8> {
    request_v2(NLM_F_REQUEST | NLM_F_DUMP, seq, family, states, &[])
}

/// nlmsghdr + struct inet_diag_req_v2 with `sockid` (48 bytes; zeros when shorter).
fn request_v2(flags: u16, seq: u32, family: u8, states: u32, sockid: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + 56;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    b.extend_from_slice(&states.to_ne_bytes());
    b.extend_from_slice(sockid);
    b.resize(len, 0);
    b
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one datagram of replies into `out`. Returns whether the dump is done.
pub fn parse_replies(buf: &[u8], out: &mut Vec<DiagSocket>) -> io::Result<bool> {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_ne(buf, at) as usize;
        let kind = u16_ne(buf, at + 4);
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "sock_diag: a truncated netlink message",
            ));
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = if len >= NLMSG_HDRLEN + 4 {
                    -(u32_ne(buf, at + NLMSG_HDRLEN) as i32)
                } else {
                    libc::EIO
                };
                return Err(io::Error::from_raw_os_error(errno));
            }
            SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDRLEN + DIAG_MSG_LEN => {
                let m = &buf[at + NLMSG_HDRLEN..at + len];
                let (family, state) = (m[0], m[1]);
                // sockid: sport, dport (big-endian), src[16], dst[16], if, cookie.
                let port = u16::from_be_bytes([m[4], m[5]]);
                let ip = match i32::from(family) {
                    libc::AF_INET => IpAddr::V4(Ipv4Addr::new(m[8], m[9], m[10], m[11])),
                    libc::AF_INET6 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(&m[8..24]);
                        IpAddr::V6(Ipv6Addr::from(a)).to_canonical()
                    }
                    _ => {
                        at += (len + 3) & !3;
                        continue;
                    }
                };
                let inode = u32_ne(m, 68);
                out.push((SocketAddr::new(ip, port), state, u64::from(inode)));
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok(false)
}

/// A request for the one socket with this local and remote address (no dump: the kernel looks
/// it up in its hash instead of walking every socket, TIME_WAIT ones included).
fn exact_request(local: SocketAddr, remote: SocketAddr) -> Option<Vec<u8>> {
    let (family, src, dst) = match (local.ip().to_canonical(), remote.ip().to_canonical()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let (mut x, mut y) = ([0u8; 16], [0u8; 16]);
            x[..4].copy_from_slice(&a.octets());
            y[..4].copy_from_slice(&b.octets());
            (libc::AF_INET, x, y)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (libc::AF_INET6, a.octets(), b.octets()),
        _ => return None,
    };
    // inet_diag_sockid: sport, dport (big-endian), src, dst, if, cookie (none: 2 x ~0).
    let mut id = Vec::with_capacity(48);
    id.extend_from_slice(&local.port().to_be_bytes());
    id.extend_from_slice(&remote.port().to_be_bytes());
    id.extend_from_slice(&src);
    id.extend_from_slice(&dst);
    id.extend_from_slice(&0u32.to_ne_bytes());
    id.extend_from_slice(&[0xff; 8]);
    Some(request_v2(NLM_F_REQUEST, 1, family as u8, u32::MAX, &id))
}

fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(fd: &OwnedFd, req: &[u8]) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr_nl addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: req and kernel outlive the call; lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A sock_diag socket kept for lookups of one socket at a time.
#[derive(Debug)]
pub struct Diag(OwnedFd);

impl Diag {
    /// Opens the socket and checks that the kernel has a TCP handler behind it: where inet_diag
    /// and tcp_diag are modules that cannot load (modules_disabled, a container, a VM booted on
    /// another root: Debian's cloud kernels build them as modules), every request answers
    /// ENOENT, which an exact lookup would take for "no such socket". A dump of the listening
    /// sockets alone tells the two apart; the caller then reads the socket tables instead.
    pub fn open() -> io::Result<Self> {
        let fd = diag_socket()?;
        let mut buf = vec![0u8; 16 << 10];
        dump(
            &fd,
            libc::AF_INET as u8,
            LISTEN_ONLY,
            1,
            &mut buf,
            &mut Vec::new(),
        )?;
        Ok(Self(fd))
    }

    /// The inode of the TCP socket with this local and remote address: `None` when there is
    /// none (gone) or it has no inode any more (TIME_WAIT). One lookup, whatever the number of
    /// sockets.
    pub fn tcp_inode(&self, local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u64>> {
        let fd = &self.0;
        let Some(req) = exact_request(local, remote) else {
            return Ok(None);
        };
        send(fd, &req)?;
        let mut buf = [0u8; 1024];
        let n = recv(fd, &mut buf)?;
        let mut out = Vec::new();
        match parse_replies(&buf[..n], &mut out) {
            Ok(_) => Ok(out.first().map(|s| s.2).filter(|&i| i != 0)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One datagram into `buf` (retried when a signal interrupts); its length.
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Every live TCP socket of this network namespace, IPv4 and IPv6.
pub fn tcp_sockets() -> io::Result<Vec<DiagSocket>> {
    let fd = diag_socket()?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    for (seq, family) in [(1u32, libc::AF_INET), (2, libc::AF_INET6)] {
        dump(&fd, family as u8, LIVE_STATES, seq, &mut buf, &mut out)?;
    }
    Ok(out)
}

/// One dump of a family's TCP sockets in `states`, appended to `out`.
fn dump(
    fd: &OwnedFd,
    family: u8,
    states: u32,
    seq: u32,
    buf: &mut [u8],
    out: &mut Vec<DiagSocket>,
) -> io::Result<()> {
    send(fd, &request(family, states, seq))?;
    // Bounded: a dump ends with NLMSG_DONE; a stuck reply gives up after many datagrams.
    for _ in 0..100_000 {
        let n = recv(fd, buf)?;
        if parse_replies(&buf[..n], out)? {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply datagram: one IPv4 socket message, then NLMSG_DONE.
    fn reply(state: u8, port: u16, inode: u32) -> Vec<u8> {
        let mut msg = vec![0u8; DIAG_MSG_LEN];
        msg[0] = libc::AF_INET as u8;
        msg[1] = state;
        msg[4..6].copy_from_slice(&port.to_be_bytes());
        msg[8..12].copy_from_slice(&[127, 0, 0, 1]);
        msg[68..72].copy_from_slice(&inode.to_ne_bytes());
        let mut b = Vec::new();
        b.extend_from_slice(&((NLMSG_HDRLEN + DIAG_MSG_LEN) as u32).to_ne_bytes());
        b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        b.extend_from_slice(&[0; 10]);
        b.extend_from_slice(&msg);
        b.extend_from_slice(&(NLMSG_HDRLEN as u32 + 4).to_ne_bytes());
        b.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        b.extend_from_slice(&[0; 14]);
        b
    }

    #[test]
    fn replies_parse_to_address_state_inode() {
        let mut out = Vec::new();
        assert!(parse_replies(&reply(10, 80, 4242), &mut out).unwrap());
        assert_eq!(out, vec![("127.0.0.1:80".parse().unwrap(), 10, 4242)]);
        // Cut inside a message: an error, not a panic.
        let r = reply(1, 80, 1);
        assert!(parse_replies(&r[..40], &mut out).is_err());
    }

    #[test]
    fn one_connected_socket_is_found_by_its_two_addresses() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let (local, remote) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let d = Diag::open().expect("sock_diag");
        let client = d
            .tcp_inode(local, remote)
            .expect("sock_diag")
            .expect("found");
        let server = d
            .tcp_inode(remote, local)
            .expect("sock_diag")
            .expect("found");
        assert_ne!(client, server);
        let all = tcp_sockets().expect("sock_diag");
        assert!(all.contains(&(local, 1, client)), "the dump agrees");
        // No such connection: none, not an error.
        let nowhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(d.tcp_inode(local, nowhere).expect("sock_diag"), None);
        // The socket answers again after a miss.
        assert_eq!(d.tcp_inode(local, remote).expect("sock_diag"), Some(client));
        drop(s);
    }

    #[test]
    fn this_process_listening_socket_is_listed() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let all = tcp_sockets().expect("sock_diag");
        assert!(
            all.iter()
                .any(|(a, state, ino)| *a == addr && *state == 10 && *ino != 0),
            "{addr} not in {} sockets",
            all.len()
        );
    }
}
