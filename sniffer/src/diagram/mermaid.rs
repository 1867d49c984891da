//! Mermaid sequence diagram lines: `FROM->>TO: METHOD PATH` for requests and
//! `TO-->>FROM: STATUS REASON PATH` for responses, in log order, so `autonumber` numbers the
//! arrows as the log numbers its messages.
use std::collections::HashMap;

use super::{
    model::{Msg, Paths},
    placeholders::Placeholders,
};

/// Words mermaid reads as syntax in a sequence diagram.
const KEYWORDS: &[&str] = &[
    "participant",
    "actor",
    "as",
    "end",
    "opt",
    "loop",
    "alt",
    "else",
    "par",
    "and",
    "rect",
    "note",
    "over",
    "left",
    "right",
    "of",
    "activate",
    "deactivate",
    "autonumber",
    "critical",
    "break",
    "box",
    "title",
    "create",
    "destroy",
    "link",
    "links",
];

/// Whether mermaid would read `name` as written, as a participant.
fn plain(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !KEYWORDS.contains(&name.to_ascii_lowercase().as_str())
}

/// Message text that mermaid would cut or misread (`;` ends a statement, `#` starts an entity).
fn text(s: &str) -> String {
    s.replace('#', "#35;").replace(';', "#59;")
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    pub placeholders: bool,
    pub standalone: bool,
    pub paths: Paths,
}

/// What the converter produced.
#[derive(Debug, Default)]
pub struct Diagram {
    pub text: String,
    pub placeholders: Placeholders,
}

/// Index of each request's response in `msgs` (by exchange when known, else FIFO per
/// from/to/method/url).
pub fn responses(msgs: &[Msg]) -> HashMap<usize, usize> {
    let mut open: HashMap<(String, String, String, String), Vec<usize>> = HashMap::new();
    let mut by_exchange: HashMap<u64, usize> = HashMap::new();
    let mut out = HashMap::new();
    for (i, m) in msgs.iter().enumerate() {
        let key = (
            m.from.clone(),
            m.to.clone(),
            m.method.clone(),
            m.url.clone(),
        );
        if m.request {
            if let Some(x) = m.exchange {
                by_exchange.insert(x, i);
            }
            open.entry(key).or_default().push(i);
        } else {
            let req = m
                .exchange
                .and_then(|x| by_exchange.get(&x).copied())
                .or_else(|| {
                    let q = open.get_mut(&key)?;
                    (!q.is_empty()).then(|| q.remove(0))
                });
            if let Some(r) = req {
                out.insert(r, i);
            }
        }
    }
    out
}

/// Ranges [first, last] (indexes into `msgs`) of service-token calls to wrap in `opt FROM token issue`: a process
/// that is serving a request asks keystone for a token (POST .../auth/tokens) right after its
/// version discovery (GET of the identity root), as four consecutive messages.
pub fn token_blocks(msgs: &[Msg]) -> Vec<(usize, usize)> {
    let resp = responses(msgs);
    let mut blocks = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let path = m.path();
        let path = path.split('?').next().unwrap_or("");
        if !(m.request && m.method == "POST" && path.ends_with("/auth/tokens")) || i < 2 {
            continue;
        }
        let Some(&post_resp) = resp.get(&i) else {
            continue;
        };
        let (disc, disc_resp) = (&msgs[i - 2], &msgs[i - 1]);
        let root = path.trim_end_matches("/auth/tokens");
        let root = root.strip_suffix("/v3").unwrap_or(root);
        let dpath = disc.path();
        let dpath = dpath.split('?').next().unwrap_or("").trim_end_matches('/');
        let is_discovery = disc.request
            && disc.method == "GET"
            && disc.from == m.from
            && disc.to == m.to
            && (dpath == root.trim_end_matches('/')
                || dpath == format!("{}/v3", root.trim_end_matches('/')))
            && resp.get(&(i - 2)) == Some(&(i - 1))
            && !disc_resp.request;
        // Serving: an earlier request to this process is still unanswered.
        let serving = msgs[..i - 2].iter().enumerate().any(|(j, q)| {
            q.request && q.to == m.from && resp.get(&j).is_none_or(|&r| r > post_resp)
        });
        if is_discovery && serving && post_resp == i + 1 {
            blocks.push((i - 2, post_resp));
        }
    }
    blocks
}

/// Draws `msgs`.
pub fn draw(msgs: &[Msg], opts: Options) -> Diagram {
    let mut ph = Placeholders::new();
    // Participants in order of first appearance, aliased when mermaid would misread them.
    let mut order: Vec<String> = Vec::new();
    for m in msgs {
        for n in [&m.from, &m.to] {
            if !order.contains(n) {
                order.push(n.clone());
            }
        }
    }
    let alias: HashMap<&str, String> = order
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.as_str(),
                if plain(n) {
                    n.clone()
                } else {
                    format!("p{}", i + 1)
                },
            )
        })
        .collect();
    let id = |n: &str| alias.get(n).cloned().unwrap_or_else(|| n.to_owned());
    let blocks = token_blocks(msgs);
    let mut lines: Vec<String> = Vec::new();
    let indent = if opts.standalone { "    " } else { "" };
    for n in &order {
        if opts.standalone || !plain(n) {
            let decl = if plain(n) {
                format!("participant {n}")
            } else {
                format!("participant {} as {}", id(n), text(n))
            };
            lines.push(format!("{indent}{decl}"));
        }
    }
    for (i, m) in msgs.iter().enumerate() {
        if let Some(&(_, _)) = blocks.iter().find(|b| b.0 == i) {
            lines.push(format!("{indent}opt {} token issue", text(&m.from)));
        }
        let inside = blocks.iter().any(|b| b.0 <= i && i <= b.1);
        let pad = if inside { "  " } else { "" };
        let path = if opts.placeholders {
            ph.apply(&m.shown_path(opts.paths))
        } else {
            m.shown_path(opts.paths)
        };
        let line = if m.request {
            format!("{}->>{}: {} {}", id(&m.from), id(&m.to), m.method, path)
        } else {
            let status = m.status.map_or("?".to_owned(), |s| s.to_string());
            format!(
                "{}-->>{}: {} {} {}",
                id(&m.to),
                id(&m.from),
                status,
                m.reason,
                path
            )
        };
        lines.push(format!("{indent}{pad}{}", text(&line)));
        if blocks.iter().any(|b| b.1 == i) {
            lines.push(format!("{indent}end"));
        }
    }
    let mut out = String::new();
    if opts.standalone {
        out.push_str("```mermaid\nsequenceDiagram\n    autonumber\n");
    }
    for l in &lines {
        out.push_str(l);
        out.push('\n');
    }
    if opts.standalone {
        out.push_str("```\n");
    }
    if opts.placeholders && !ph.table.is_empty() {
        out.push('\n');
        out.push_str(&ph.markdown_table());
    }
    Diagram {
        text: out,
        placeholders: ph,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagram::model::from_log;

    /// A reference folder's log and hand-made diagram, copied byte for byte from the
    /// instrumented devstack's output into `fixtures/reference/` beside this file. A missing
    /// file fails the test: it is never skipped.
    fn reference(name: &str) -> (String, String) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/diagram/fixtures/reference")
            .join(name);
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
        };
        (read("requestshook.log"), read("diagram.md"))
    }

    /// The reference diagrams, with what was edited by hand made comparable: the Korean opt
    /// label, and queries the hand-made diagrams dropped.
    fn normalize(d: &str) -> Vec<String> {
        d.lines()
            .map(|l| {
                let l = if l.trim_start().starts_with("opt ") {
                    format!("{}opt", &l[..l.len() - l.trim_start().len()])
                } else {
                    l.to_owned()
                };
                match l.split_once('?') {
                    Some((a, _)) => a.to_owned(),
                    None => l,
                }
            })
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    #[test]
    fn reference_logs_give_the_reference_diagrams() {
        // image-show's page kept the raw id; the others name it. image-save's page was edited
        // differently by hand (`AUTH_{account}`, and an opt around a token call without version
        // discovery, which image-create's page leaves unwrapped): it is not a reference for rules.
        for (name, placeholders) in [
            ("image-list", true),
            ("image-show", false),
            ("image-create", true),
        ] {
            let (log, want) = reference(name);
            let msgs = from_log(&log).unwrap();
            let got = draw(
                &msgs,
                Options {
                    placeholders,
                    ..Options::default()
                },
            );
            assert_eq!(
                normalize(&got.text)
                    .iter()
                    .take_while(|l| !l.starts_with('|'))
                    .cloned()
                    .collect::<Vec<_>>(),
                normalize(&want),
                "{name}"
            );
        }
    }

    fn msg(
        n: u64,
        request: bool,
        from: &str,
        to: &str,
        method: &str,
        path: &str,
        status: Option<u16>,
    ) -> Msg {
        Msg {
            number: n,
            request,
            from: from.into(),
            to: to.into(),
            method: method.into(),
            url: format!("http://127.0.0.1{path}"),
            status,
            reason: if status.is_some() {
                "OK".into()
            } else {
                String::new()
            },
            headers: vec![],
            body: "none".into(),
            exchange: None,
            ..Default::default()
        }
    }

    #[test]
    fn awkward_names_are_aliased_and_standalone_is_complete() {
        let msgs = vec![
            msg(1, true, "openstack", "127.0.0.1:5000", "GET", "/v3;x", None),
            msg(
                2,
                false,
                "openstack",
                "127.0.0.1:5000",
                "GET",
                "/v3;x",
                Some(200),
            ),
        ];
        let d = draw(
            &msgs,
            Options {
                standalone: true,
                ..Options::default()
            },
        );
        assert_eq!(
            d.text,
            "```mermaid\nsequenceDiagram\n    autonumber\n    participant openstack\n    participant p2 as 127.0.0.1:5000\n    openstack->>p2: GET /v3#59;x\n    p2-->>openstack: 200 OK /v3#59;x\n```\n"
        );
        let d = draw(&msgs, Options::default());
        assert!(
            d.text
                .starts_with("participant p2 as 127.0.0.1:5000\nopenstack->>p2: GET"),
            "{}",
            d.text
        );
    }

    #[test]
    fn service_token_calls_while_serving_are_wrapped() {
        let msgs = vec![
            msg(
                1,
                true,
                "openstack",
                "glance-api",
                "GET",
                "/v2/images",
                None,
            ),
            msg(2, true, "glance-api", "keystone", "GET", "/identity/", None),
            msg(
                3,
                false,
                "glance-api",
                "keystone",
                "GET",
                "/identity/",
                Some(300),
            ),
            msg(
                4,
                true,
                "glance-api",
                "keystone",
                "POST",
                "/identity/v3/auth/tokens",
                None,
            ),
            msg(
                5,
                false,
                "glance-api",
                "keystone",
                "POST",
                "/identity/v3/auth/tokens",
                Some(201),
            ),
            msg(
                6,
                false,
                "openstack",
                "glance-api",
                "GET",
                "/v2/images",
                Some(200),
            ),
        ];
        let d = draw(&msgs, Options::default());
        assert_eq!(
            d.text,
            "openstack->>glance-api: GET /v2/images\nopt glance-api token issue\n  glance-api->>keystone: GET /identity/\n  keystone-->>glance-api: 300 OK /identity/\n  glance-api->>keystone: POST /identity/v3/auth/tokens\n  keystone-->>glance-api: 201 OK /identity/v3/auth/tokens\nend\nglance-api-->>openstack: 200 OK /v2/images\n"
        );
        // The CLI's own token (not while serving) is not wrapped.
        let d = draw(&msgs[1..5], Options::default());
        assert!(!d.text.contains("opt"));
    }
}
