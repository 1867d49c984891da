use super::*;
use crate::diagram::{
    mermaid::{self, draw},
    model::{from_jsonl, from_log},
};

fn reference_log(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/diagram/fixtures/reference")
        .join(name)
        .join("requestshook.log");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

#[test]
fn the_model_follows_the_mermaid_diagram() {
    let msgs = from_log(&reference_log("image-create")).unwrap();
    let opts = Options {
        placeholders: true,
        ..Options::default()
    };
    let m = model(&msgs, &opts);
    assert_eq!(
        m.participants,
        ["openstack", "keystone", "glance-api", "swift-proxy-server"]
    );
    assert_eq!(m.arrows.len(), msgs.len());
    // Each arrow's label is the text after `: ` of its mermaid line, in the same order.
    let d = draw(
        &msgs,
        mermaid::Options {
            placeholders: true,
            ..mermaid::Options::default()
        },
    );
    let lines: Vec<&str> = d
        .text
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(">>"))
        .collect();
    assert_eq!(lines.len(), m.arrows.len());
    for (a, l) in m.arrows.iter().zip(&lines) {
        let (ends, label) = l.split_once(": ").unwrap();
        assert_eq!(a.label, label);
        let (src, dst) = if a.req {
            ends.split_once("->>").unwrap()
        } else {
            ends.split_once("-->>").unwrap()
        };
        assert_eq!(
            (
                m.participants[a.src].as_str(),
                m.participants[a.dst].as_str()
            ),
            (src, dst),
            "{l}"
        );
    }
    // The one token issue block of the diagram, over the same four messages.
    let opt = d.text.lines().position(|l| l.starts_with("opt ")).unwrap();
    assert_eq!(
        m.blocks,
        vec![Block {
            first: opt,
            last: opt + 3,
            label: "opt glance-api token issue".into()
        }]
    );
    // Requests and responses know each other; the one HEAD whose response names another URL
    // (swift added a query) cannot be paired from the log.
    let unpaired: Vec<u64> = m
        .arrows
        .iter()
        .filter(|a| a.pair.is_none())
        .map(|a| a.n)
        .collect();
    assert_eq!(unpaired, [16, 19]);
    for (i, a) in m.arrows.iter().enumerate() {
        let Some(p) = a.pair else { continue };
        assert_eq!(m.arrows[p].pair, Some(i));
        assert_ne!(m.arrows[p].req, a.req);
        assert_eq!(m.arrows[p].status, a.status);
    }
    assert!(
        m.placeholders.iter().any(|(k, _)| k == "{image_id}"),
        "{:?}",
        m.placeholders
    );
    assert!(!m.timed);
}

#[test]
fn times_sizes_marks_and_served_paths_from_the_jsonl() {
    let line = concat!(
        r#"{"id":4,"from":"openstack","to":"glance-api","via":"apache2","upstream":{"server":null,"target":"/v2/images"},"#,
        r#""method":"GET","url":"http://127.0.0.1/image/v2/images","status":200,"reason":"OK","orphan":false,"#,
        r#""request":{"number":1,"first_ts_ns":5000000,"last_ts_ns":5100000,"first_unix_ns":1700000000005000000,"headers":[["Host","h"]],"body_size":0,"body_missing":0,"body_lost":0,"body_truncated":false,"body":"none","complete":true,"broken":null,"after_gap":false},"#,
        r#""response":{"number":2,"first_ts_ns":39000000,"last_ts_ns":40000000,"first_unix_ns":1700000000039000000,"headers":[],"body_size":1234,"body_missing":10,"body_lost":3,"body_truncated":true,"body":"{}","complete":false,"broken":null,"after_gap":true}}"#
    );
    let msgs = from_jsonl(line).unwrap();
    let client = model(&msgs, &Options::default());
    assert_eq!(client.arrows[0].label, "GET /image/v2/images");
    let m = model(
        &msgs,
        &Options {
            paths: Paths::Served,
            ..Options::default()
        },
    );
    assert!(m.timed);
    let (q, r) = (&m.arrows[0], &m.arrows[1]);
    assert_eq!(q.label, "GET /v2/images");
    assert_eq!(r.label, "200 OK /v2/images");
    assert_eq!((q.t_ms, r.t_ms), (Some(0.0), Some(34.0)));
    assert_eq!(r.span_ms, Some(1.0));
    assert_eq!(q.unix_ms, Some(1_700_000_000_005.0));
    assert_eq!(
        (r.size, r.missing, r.lost, r.truncated),
        (Some(1234), 10, 3, true)
    );
    assert_eq!(
        r.marks,
        [
            "[incomplete: the connection ended before this message did]",
            "[bytes were lost on this connection before this message]"
        ]
    );
    assert_eq!(
        (q.served.as_deref(), q.via.as_deref()),
        (Some("/v2/images"), Some("apache2"))
    );
}

#[test]
fn the_page_is_self_contained_and_its_data_cannot_end_the_script() {
    let log = "\n### [1] (a) REQ >>> (b) : POST http://127.0.0.1:1/x\nX-Evil: </script><script>alert(1)</script>\n\n<!-- hi\n\n\n### [2] (a) RESP <<< (b) : 200 OK POST http://127.0.0.1:1/x\n\nnone\n";
    let msgs = from_log(log).unwrap();
    let page = page(
        &msgs,
        &Options {
            source: "a<b>.log".into(),
            ..Options::default()
        },
    );
    assert_eq!(
        page.matches("</script>").count(),
        2,
        "only the two script elements end"
    );
    assert!(!page.contains("<!-- hi"));
    assert!(page.contains("<title>a&lt;b&gt;.log - sniffer report</title>"));
    for external in ["<link", "src=", "href=", "@import", "url(http"] {
        assert!(!page.contains(external), "{external} in the page");
    }
    // The JSON reads back as the model.
    let start = page.find("id=\"model\">").unwrap() + "id=\"model\">".len();
    let end = start + page[start..].find("</script>").unwrap();
    let v: serde_json::Value = serde_json::from_str(&page[start..end]).unwrap();
    assert_eq!(
        v["arrows"][0]["headers"][0][1],
        "</script><script>alert(1)</script>"
    );
    assert_eq!(v["arrows"][0]["body"], "<!-- hi");
}

#[test]
fn body_sizes_from_the_log_notes() {
    let m = |body: &str| Msg {
        body: body.into(),
        ..Msg::default()
    };
    assert_eq!(
        size_from_log(&m("{\n  \"a\": 1\n}\n[65536 of 200000 body bytes shown]")),
        Some(200_000)
    );
    assert_eq!(
        size_from_log(&m("<octet-stream 21233664 bytes> 0x5146")),
        Some(21_233_664)
    );
    assert_eq!(
        size_from_log(&m(
            "x\n[8 of 99 body bytes shown; 91 bytes counted, not copied]"
        )),
        Some(99)
    );
    assert_eq!(size_from_log(&m("none")), None);
    assert_eq!(size_from_log(&m("[1 of x body bytes shown]")), None);
}
