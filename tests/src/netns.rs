//! Hosts for multi-host tests on one machine: network namespaces, each with its loopback and
//! one veth into a bridge, addressed from 198.18.0.0/15 only (the range RFC 2544 keeps for such
//! tests). A [`Lab`] removes everything it made when it drops, also when the test fails.
use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
};

/// Runs `ip ARGS`; panics with its stderr when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e} (iproute2 is needed)"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One host of a lab.
#[derive(Clone, Debug)]
pub struct LabHost {
    /// Its name (what `sniffer --host` says), e.g. `controller`.
    pub name: String,
    /// The network namespace it is.
    pub ns: String,
    pub addr: Ipv4Addr,
}

/// Network namespaces joined by a bridge.
pub struct Lab {
    bridge: Option<String>,
    pub hosts: Vec<LabHost>,
}

impl Lab {
    /// Hosts `names` on 198.18.`subnet`.0/24 (.1, .2 ... in order); `tag` (a few letters)
    /// keeps the device and namespace names of concurrent labs apart.
    pub fn new(tag: &str, subnet: u8, names: &[&str]) -> Self {
        assert!(names.len() < 250, "a lab takes one /24 of 198.18.0.0/15");
        let id = format!("{tag}{}", std::process::id() % 100_000);
        assert!(id.len() <= 12, "tag too long for device names: {tag}");
        let mut lab = Self {
            bridge: None,
            hosts: Vec::new(),
        };
        let bridge = format!("b{id}");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        lab.bridge = Some(bridge.clone());
        ip(&["link", "set", &bridge, "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("sniffer-{id}-{name}");
            ip(&["netns", "add", &ns]);
            let addr = Ipv4Addr::new(198, 18, subnet, i as u8 + 1);
            lab.hosts.push(LabHost {
                name: (*name).to_owned(),
                ns: ns.clone(),
                addr,
            });
            let (outer, inner) = (format!("r{id}{i}"), format!("n{id}{i}"));
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &outer, "master", &bridge]);
            ip(&["link", "set", &outer, "up"]);
            let cidr = format!("{addr}/24");
            for args in [
                vec!["link", "set", "lo", "up"],
                vec!["link", "set", &inner, "name", "eth0"],
                vec!["addr", "add", &cidr, "dev", "eth0"],
                vec!["link", "set", "eth0", "up"],
            ] {
                let mut full = vec!["netns", "exec", &ns, "ip"];
                full.extend(args);
                ip(&full);
            }
        }
        lab
    }

    pub fn host(&self, name: &str) -> &LabHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the lab"))
    }

    /// `program ARGS` to run in host `name`'s namespace.
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host(name).ns]).arg(program);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and so its peer on the bridge.
        for h in &self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &h.ns])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(b) = &self.bridge {
            let _ = Command::new("ip")
                .args(["link", "del", b])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A copy of tests/fixtures/mini_service.py named `name` in `dir` (so that sniffer names the
/// process `name`, as devstack's scripts are named).
pub fn script(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    if !path.exists() {
        std::fs::copy(crate::fixture("mini_service.py"), &path)
            .unwrap_or_else(|e| panic!("copy mini_service.py to {}: {e}", path.display()));
    }
    path
}

/// A service of the lab (mini_service.py serve), stopped on drop.
pub struct Service {
    pub guard: crate::Guard,
    pub port: u16,
    /// Its own request log: "METHOD PATH CLIENT_IP CLIENT_PORT" a line.
    pub log: std::path::PathBuf,
    pub name: String,
    pub host: String,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Its request log's lines.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Lab {
    /// Starts service `name` on `host`, listening on `bind:port`; each request under /v2/
    /// first POSTs to every URL of `calls`.
    pub fn service(
        &self,
        host: &str,
        dir: &std::path::Path,
        name: &str,
        bind: &str,
        port: u16,
        calls: &[String],
    ) -> Service {
        let log = dir.join(format!("{name}@{host}.requests"));
        let mut cmd = self.command(host, "python3");
        cmd.arg(script(dir, name))
            .arg("serve")
            .args(["--bind", bind, "--port", &port.to_string()])
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::piped());
        for c in calls {
            cmd.args(["--call", c]);
        }
        let mut guard = crate::Guard::spawn(&mut cmd);
        let lines = crate::Lines::new(guard.child.stdout.take().expect("stdout"));
        let port = lines
            .expect("PORT ", std::time::Duration::from_secs(20))
            .trim_start_matches("PORT ")
            .parse()
            .expect("port number");
        Service {
            guard,
            port,
            log,
            name: name.to_owned(),
            host: host.to_owned(),
        }
    }

    /// A client named `name` on `host` that makes `calls` ("METHOD URL") once it is told to
    /// (see [`crate::Interactive::send_line`]); it prints "STATUS METHOD URL" per call, then
    /// "DONE".
    pub fn client(
        &self,
        host: &str,
        dir: &std::path::Path,
        name: &str,
        calls: &[String],
    ) -> crate::Interactive {
        let mut cmd = self.command(host, "python3");
        cmd.arg(script(dir, name)).arg("client").args(calls);
        crate::Interactive::start(&mut cmd)
    }
}

/// The inode of a process's network namespace (what the kernel reports for its sockets).
pub fn netns_of(pid: u32) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("netns of {pid}: {e}"))
        .ino() as u32
}

/// The two-host scene of the multi-host tests, run: a controller with keystone and
/// glance-api, compute1 with a second glance-api (which asks the controller's keystone) and
/// the openstack client, one sniffer per host tracing only that host's processes, compute1's
/// with its recorded clock `skew_ms` ahead.
///
/// openstack calls keystone (GET /v3), the controller's glance-api (POST /v2/images: it asks
/// keystone inside) and compute1's glance-api over loopback (GET /v2/images: it asks the
/// controller's keystone inside).
pub struct TwoHosts {
    pub controller: crate::Capture,
    pub compute1: crate::Capture,
    pub keystone: Service,
    pub glance_controller: Service,
    pub glance_compute1: Service,
    /// Subnet: hosts are 198.18.`subnet`.1 (controller) and .2 (compute1).
    pub subnet: u8,
    pub dir: tempfile::TempDir,
    /// Last: the namespaces go once the processes in them are gone.
    pub lab: Lab,
}

impl TwoHosts {
    pub fn run(tag: &str, subnet: u8, skew_ms: i64) -> Self {
        use std::time::Duration;
        let lab = Lab::new(tag, subnet, &["controller", "compute1"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let ctl = lab.host("controller").addr.to_string();
        let tokens = format!("http://{ctl}:5000/v3/auth/tokens");
        let keystone = lab.service("controller", dir.path(), "keystone", &ctl, 5000, &[]);
        let glance_controller = lab.service(
            "controller",
            dir.path(),
            "glance-api",
            &ctl,
            9292,
            std::slice::from_ref(&tokens),
        );
        let glance_compute1 = lab.service(
            "compute1",
            dir.path(),
            "glance-api",
            "0.0.0.0",
            9292,
            std::slice::from_ref(&tokens),
        );
        let calls = [
            format!("GET http://{ctl}:5000/v3"),
            format!("POST http://{ctl}:9292/v2/images"),
            "GET http://127.0.0.1:9292/v2/images".to_owned(),
        ];
        let mut cli = lab.client("compute1", dir.path(), "openstack", &calls);
        let pid = |s: &Service| s.pid().to_string();
        let (ks, gc, g1, c) = (
            pid(&keystone),
            pid(&glance_controller),
            pid(&glance_compute1),
            cli.guard.pid().to_string(),
        );
        let on_controller = crate::Running::start_in(
            Some(&lab.host("controller").ns),
            &["--host", "controller", "--pid", &ks, "--pid", &gc],
            false,
        );
        let shift = skew_ms.to_string();
        let on_compute1 = crate::Running::start_in(
            Some(&lab.host("compute1").ns),
            &[
                "--host",
                "compute1",
                "--pid",
                &g1,
                "--pid",
                &c,
                "--clock-shift-ms",
                &shift,
            ],
            false,
        );
        cli.send_line("go");
        cli.lines.expect("DONE", Duration::from_secs(60));
        // The last bytes reach each sniffer within its order slack.
        std::thread::sleep(Duration::from_millis(700));
        let compute1 = on_compute1.stop();
        let controller = on_controller.stop();
        Self {
            controller,
            compute1,
            keystone,
            glance_controller,
            glance_compute1,
            subnet,
            dir,
            lab,
        }
    }
}
