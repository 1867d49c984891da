//! A two-node OpenStack made of network namespaces (`cargo xtask e2e`): the controller runs
//! keystone and glance-api, compute1 a second glance-api (region RegionTwo, checking tokens at
//! the controller's keystone) and the openstack CLI; addresses from 198.18.0.0/15. One sniffer
//! per host, in its namespace, tracing only its host's processes, compute1's recorded clock
//! 5 s ahead; then `sniffer merge`.
//!
//! The merged log must hold every request the three services logged, once; the calls from
//! compute1 to the controller with both ends; the glance-apis' calls to keystone inside the
//! calls they serve, across hosts too; and the 5 s found again.
use std::{ffi::OsString, fs, time::Duration};

use serde_json::Value;
use sniffer_tests::{
    Interactive, Running, kernel_tests,
    netns::Lab,
    openstack::{
        Run, Service, assert_nested, assert_numbered_and_drawn, bed_env, bed_process,
        create_image_args, fresh_dir, openstack_venv, participants, qcow2, seen_by, sorted,
    },
    sniffer_tool,
};

#[test]
fn a_two_node_openstack_merges_into_one_story_with_a_clock_five_seconds_off() {
    if !kernel_tests() {
        return;
    }
    // First, so that it goes last: the namespaces outlive the services in them.
    let lab = Lab::new("os", 40, &["controller", "compute1"]);
    let (ctl, cmp) = (lab.host("controller"), lab.host("compute1"));
    let (_ctl_bed, ctl_info) = bed_process(
        Some(&ctl.ns),
        "e2e-multihost-controller",
        &["--bind".into(), ctl.addr.to_string().into()],
    );
    let keystone = Service::from(&ctl_info["keystone"]);
    let glance_ctl = Service::from(&ctl_info["glance"]);
    let auth_url = ctl_info["env"]["OS_AUTH_URL"]
        .as_str()
        .expect("OS_AUTH_URL")
        .to_owned();
    let (_cmp_bed, cmp_info) = bed_process(
        Some(&cmp.ns),
        "e2e-multihost-compute1",
        &[
            "--bind".into(),
            cmp.addr.to_string().into(),
            "--keystone".into(),
            auth_url.into(),
            "--region".into(),
            "RegionTwo".into(),
            "--glance-user".into(),
            "glance-compute1".into(),
        ],
    );
    let glance_cmp = Service::from(&cmp_info["glance"]);
    let env = bed_env(&cmp_info);
    let dir = fresh_dir("e2e-out/multihost");
    let img = qcow2(&dir, 1 << 20);

    let (k0, gc0, g10) = (
        keystone.log_len(),
        glance_ctl.log_len(),
        glance_cmp.log_len(),
    );
    let on_controller = Running::start_in(
        Some(&ctl.ns),
        &[
            "--host",
            "controller",
            "--pid",
            &keystone.pid.to_string(),
            "--pid",
            &glance_ctl.pid.to_string(),
        ],
        false,
    );
    // The CLI runs on compute1, traced by pid: each command waits for a line, then execs
    // openstack (`--comm openstack` would catch every openstack on this machine, whatever its
    // namespace: other hosts' too).
    let openstack = |region: &str, args: &[&str]| {
        let mut cmd = lab.command("compute1", "sh");
        cmd.args(["-c", "read _ && exec \"$0\" \"$@\""])
            .arg(openstack_venv().join("bin/openstack"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("OS_REGION_NAME", region);
        Interactive::start(&mut cmd)
    };
    // The controller's glance (RegionOne), then compute1's (RegionTwo).
    let mut create = openstack("RegionOne", &create_image_args(&img));
    let mut list = openstack("RegionTwo", &["image", "list"]);
    let on_compute1 = Running::start_in(
        Some(&cmp.ns),
        &[
            "--host",
            "compute1",
            "--pid",
            &glance_cmp.pid.to_string(),
            "--pid",
            &create.guard.pid().to_string(),
            "--pid",
            &list.guard.pid().to_string(),
            "--clock-shift-ms",
            "5000",
        ],
        false,
    );
    let limit = Duration::from_secs(180);
    create.send_line("go");
    let id = create.lines.expect("", limit);
    assert_eq!(id.trim().len(), 36, "{id}");
    let st = create.guard.wait_timeout(limit);
    assert!(st.success(), "openstack image create on compute1: {st}");
    // compute1's glance has its own database: no image there, an empty list.
    list.send_line("go");
    let st = list.guard.wait_timeout(limit);
    assert!(st.success(), "openstack image list on compute1: {st}");
    std::thread::sleep(Duration::from_millis(700));
    let compute1 = on_compute1.stop();
    let controller = on_controller.stop();
    assert!(compute1.status.success(), "{}", compute1.describe());
    assert!(controller.status.success(), "{}", controller.describe());
    // uWSGI writes its request line after the response.
    std::thread::sleep(Duration::from_millis(300));

    let (log, jsonl) = (dir.join("sniffer.log"), dir.join("exchanges.jsonl"));
    let args: Vec<OsString> = vec![
        "merge".into(),
        controller.jsonl_path().into(),
        compute1.jsonl_path().into(),
        "-o".into(),
        log.clone().into(),
        "--jsonl".into(),
        jsonl.clone().into(),
    ];
    let (code, _, report) = sniffer_tool(&args, Duration::from_secs(120));
    assert_eq!(code, 0, "{report}");
    fs::write(dir.join("merge-report.txt"), &report).expect("write report");
    let exchanges: Vec<Value> = fs::read_to_string(&jsonl)
        .expect("merged jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let run = Run {
        dir: dir.clone(),
        stdout: String::new(),
        stderr: report.clone(),
        log: fs::read_to_string(&log).expect("merged log"),
        exchanges,
        keystone: Vec::new(),
        glance: Vec::new(),
    };
    let ctx = || format!("merged log in {}\n{report}", dir.display());

    // Every request each service logged, once, and nothing it did not serve.
    for (service, name, from) in [
        (&keystone, "keystone", k0),
        (&glance_ctl, "glance-api@controller", gc0),
        (&glance_cmp, "glance-api@compute1", g10),
    ] {
        let logged = sorted(service.served_since(from));
        assert!(!logged.is_empty(), "{name} logged nothing: {}", ctx());
        assert_eq!(seen_by(&run, name), logged, "{name}: {}", ctx());
    }
    assert_eq!(
        participants(&run),
        [
            "glance-api@compute1",
            "glance-api@controller",
            "keystone",
            "openstack"
        ],
        "{}",
        ctx()
    );
    // Calls from compute1 to the controller: both ends, each with its host.
    let host = |x: &Value, end: &str| x[end]["host"]["name"].as_str().unwrap_or("").to_owned();
    let across: Vec<&Value> = run
        .exchanges
        .iter()
        .filter(|x| x["to"] == "keystone" || x["to"] == "glance-api@controller")
        .filter(|x| x["from"] == "openstack" || x["from"] == "glance-api@compute1")
        .collect();
    assert!(across.len() >= 6, "{}", ctx());
    for x in &across {
        assert_eq!(
            (host(x, "client"), host(x, "server")),
            ("compute1".to_owned(), "controller".to_owned()),
            "{x:#}\n{}",
            ctx()
        );
    }
    // Nesting across hosts, whatever the 5 s.
    assert_nested(&run, "glance-api@controller", &ctx);
    assert_nested(&run, "glance-api@compute1", &ctx);
    assert!(
        run.exchanges
            .iter()
            .any(|x| x["from"] == "glance-api@compute1" && x["to"] == "keystone"),
        "{}",
        ctx()
    );
    assert_numbered_and_drawn(&run);
    // The offset: 5 s within what the report says it knows.
    let line = report
        .lines()
        .find(|l| l.contains("host compute1"))
        .unwrap_or_else(|| panic!("no offset for compute1: {}", ctx()));
    let secs: f64 = line
        .split("clock ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((secs - 5.0).abs() < 0.005, "{line}");
}
