//! Participant names: what a diagram calls a process, and what it calls a server it only knows
//! by address.
//!
//! Engineers read `openstack`, `keystone`, `glance-api`, `swift-proxy-server`, not `python3` or
//! `uwsgi`: the rules follow how devstack runs services (uWSGI with a process-name prefix, python
//! scripts run by an interpreter) and fall back to the kernel's process name.
use std::collections::HashMap;

use crate::procs::{Proc, ProcTable};

/// Interpreters whose first script argument names the program.
fn is_interpreter(base: &str) -> bool {
    let stem = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    matches!(
        stem,
        "python" | "pypy" | "perl" | "ruby" | "node" | "sh" | "bash"
    )
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The name before `uWSGI` in a uWSGI process title (`keystone uWSGI worker 1`, `glance-apiuWSGI`).
fn uwsgi_prefix(title: &str) -> Option<&str> {
    // A byte window, not `str::find`: its searcher's set-up costs more than these short
    // titles (this runs once per exchange).
    let at = title.as_bytes().windows(5).position(|w| w == b"uWSGI")?;
    let name = title[..at].trim();
    Some(if name.is_empty() { "uwsgi" } else { name })
}

/// The participant name of a process, from its command line and kernel name.
pub fn participant(p: &Proc) -> String {
    let argv0 = p.cmdline.first().map(String::as_str).unwrap_or("");
    // uWSGI rewrites its title: `keystone uWSGI worker 1`; the comm keeps `keystoneuWSGI`.
    if let Some(n) = uwsgi_prefix(argv0).or_else(|| uwsgi_prefix(&p.comm)) {
        return n.to_owned();
    }
    let base = basename(argv0.split(' ').next().unwrap_or(argv0));
    if is_interpreter(base) {
        // `python3 -m module` names the module; `python3 [-opts] script` names the script.
        let mut args = p.cmdline.iter().skip(1);
        while let Some(a) = args.next() {
            if a == "-m" {
                if let Some(m) = args.next() {
                    return m.clone();
                }
            } else if a == "-c" {
                break;
            } else if !a.starts_with('-') {
                return basename(a).to_owned();
            }
        }
    }
    // The kernel cuts names to 15 bytes (`swift-proxy-ser`): the command line has all of it.
    if !base.is_empty() && !p.comm.is_empty() && base.starts_with(&p.comm) {
        return base.to_owned();
    }
    if p.comm.is_empty() {
        base.to_owned()
    } else {
        p.comm.clone()
    }
}

/// Names of the traced processes, with `--name PID=LABEL` overrides that also cover the
/// processes the labelled one forks.
#[derive(Debug, Default)]
pub struct Names {
    overrides: HashMap<u32, String>,
}

impl Names {
    pub fn new(overrides: HashMap<u32, String>) -> Self {
        Self { overrides }
    }

    pub fn of(&self, pid: u32, procs: &ProcTable) -> String {
        let mut at = pid;
        // Bounded walk up the parents we know, when there are labels to find.
        let walk = if self.overrides.is_empty() { 0 } else { 64 };
        for _ in 0..walk {
            if let Some(label) = self.overrides.get(&at) {
                return label.clone();
            }
            match procs.get(at) {
                Some(p) if p.ppid != 0 && p.ppid != at => at = p.ppid,
                _ => break,
            }
        }
        procs
            .get(pid)
            .map_or_else(|| format!("pid {pid}"), participant)
    }
}

/// Parses `PID=LABEL`.
pub fn parse_override(s: &str) -> Result<(u32, String), String> {
    let (pid, label) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not PID=LABEL"))?;
    let pid = pid
        .trim()
        .parse()
        .map_err(|_| format!("{pid:?} is not a pid"))?;
    let label = label.trim();
    if label.is_empty() {
        return Err("the label is empty".into());
    }
    Ok((pid, label.to_owned()))
}

/// The devstack service behind a URL, for a server that is not traced (RFC 3986 host:port and
/// path as the client sent them).
pub fn devstack_service(port: Option<u16>, path: &str) -> Option<&'static str> {
    let first = path
        .trim_start_matches('/')
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    match (port, first) {
        (Some(8080), _) => Some("swift-proxy-server"),
        (Some(9696), _) => Some("neutron-server"),
        (_, "identity") => Some("keystone"),
        (_, "image") => Some("glance-api"),
        (_, "volume") => Some("cinder-api"),
        (_, "compute") => Some("nova-api"),
        (_, "placement") => Some("placement-api"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(comm: &str, argv: &[&str]) -> Proc {
        Proc {
            pid: 10,
            ppid: 1,
            comm: comm.into(),
            cmdline: argv.iter().map(|s| (*s).to_owned()).collect(),
            exit_code: None,
        }
    }

    #[test]
    fn devstack_process_names() {
        let cases = [
            (proc("uwsgi", &["keystone uWSGI worker 1"]), "keystone"),
            (proc("keystoneuWSGI", &[]), "keystone"),
            (proc("uwsgi", &["glance-api uWSGI master"]), "glance-api"),
            (proc("glance-apiuWSGI", &["glance-apiuWSGI"]), "glance-api"),
            (proc("uwsgi", &["uWSGI master"]), "uwsgi"),
            (
                proc(
                    "openstack",
                    &[
                        "/usr/bin/python3",
                        "/usr/local/bin/openstack",
                        "image",
                        "list",
                    ],
                ),
                "openstack",
            ),
            (
                proc(
                    "swift-proxy-ser",
                    &[
                        "/opt/venv/bin/python3",
                        "/opt/venv/bin/swift-proxy-server",
                        "/etc/swift/proxy-server.conf",
                    ],
                ),
                "swift-proxy-server",
            ),
            (
                proc("python3", &["python3", "-u", "-m", "http.server", "8000"]),
                "http.server",
            ),
            (proc("python3", &["python3", "-c", "print(1)"]), "python3"),
            (proc("nova-api", &["/usr/bin/nova-api"]), "nova-api"),
            (proc("curl", &["curl", "-s", "http://x"]), "curl"),
            (
                proc(
                    "swift-object-se",
                    &["/usr/bin/swift-object-server", "/etc/swift/object.conf"],
                ),
                "swift-object-server",
            ),
            (proc("kworker", &[]), "kworker"),
        ];
        for (p, want) in cases {
            assert_eq!(participant(&p), want, "{p:?}");
        }
    }

    #[test]
    fn overrides_parse_and_reject() {
        assert_eq!(
            parse_override("42=glance-api"),
            Ok((42, "glance-api".into()))
        );
        assert!(parse_override("42").is_err());
        assert!(parse_override("x=y").is_err());
        assert!(parse_override("42=").is_err());
    }

    #[test]
    fn devstack_url_rules() {
        assert_eq!(
            devstack_service(Some(80), "/identity/v3/auth/tokens"),
            Some("keystone")
        );
        assert_eq!(
            devstack_service(None, "/image/v2/images"),
            Some("glance-api")
        );
        assert_eq!(
            devstack_service(Some(8080), "/v1/AUTH_x"),
            Some("swift-proxy-server")
        );
        assert_eq!(
            devstack_service(Some(9696), "/v2.0/ports"),
            Some("neutron-server")
        );
        assert_eq!(
            devstack_service(Some(80), "/compute/v2.1"),
            Some("nova-api")
        );
        assert_eq!(
            devstack_service(Some(80), "/placement"),
            Some("placement-api")
        );
        assert_eq!(devstack_service(Some(80), "/volume?x"), Some("cinder-api"));
        assert_eq!(devstack_service(Some(5000), "/v3"), None);
        assert_eq!(devstack_service(Some(80), "/identityx"), None);
    }
}
