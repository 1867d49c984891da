//! The messages a diagram is drawn from, read back from the numbered log or the JSONL.
use regex::Regex;

/// `--paths`: whose view of a proxied request's path the arrows show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Paths {
    /// What the client sent (`/image/v2/images` through devstack's Apache).
    #[default]
    Client,
    /// What the service received (`/v2/images`), as in-process hooks log it.
    Served,
}

/// What the JSONL says of a message beyond the log: kernel times and sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Kernel (CLOCK_MONOTONIC) times of the first and last bytes, ns.
    pub first_ns: u64,
    pub last_ns: u64,
    /// The first byte in ns since the Unix epoch.
    pub unix_ns: i128,
    pub body_size: u64,
    /// Body bytes the kernel counted but did not copy, and bytes lost to a full ring.
    pub body_missing: u64,
    pub body_lost: u64,
    /// The shown body is a preview of a longer one.
    pub truncated: bool,
}

/// One message, as the log shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Msg {
    pub number: u64,
    pub request: bool,
    /// The client (the request's sender), whichever way this message goes.
    pub from: String,
    /// The server.
    pub to: String,
    pub method: String,
    pub url: String,
    pub status: Option<u16>,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The exchange it belongs to, when the input says (JSONL).
    pub exchange: Option<u64>,
    /// The target the service received when a reverse proxy's hop was folded into this
    /// exchange (`/v2/images` for the client's `/image/v2/images`).
    pub served: Option<String>,
    /// The proxy it went through.
    pub via: Option<String>,
    /// What is not whole about it: `[incomplete: ...]`, `[broken: ...]`, ... as the log says.
    pub marks: Vec<String>,
    /// Times and sizes (JSONL only).
    pub meta: Option<Meta>,
}

impl Msg {
    /// The URL's path and query, without scheme and host (`?` when unknown).
    pub fn path(&self) -> String {
        path_of(&self.url)
    }

    /// The path an arrow shows: the client's, or with `Paths::Served` the one the service
    /// received when the exchange went through a proxy.
    pub fn shown_path(&self, paths: Paths) -> String {
        match (&self.served, paths) {
            (Some(s), Paths::Served) if self.path() != "?" => s.clone(),
            _ => self.path(),
        }
    }
}

/// The log's note on a message whose proxy hop was folded: `[served as /v2/images via apache2]`.
pub fn served_note(target: &str, via: &str) -> String {
    format!("[served as {target} via {via}]")
}

/// (target, via) of a [`served_note`] line.
fn parse_served_note(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("[served as ")?.strip_suffix(']')?;
    let (target, via) = rest.rsplit_once(" via ")?;
    (!target.is_empty() && !target.contains(' ')).then(|| (target.to_owned(), via.to_owned()))
}

/// `msgs` without those `filter` leaves out, numbered again from 1.
pub fn without(msgs: Vec<Msg>, filter: &crate::filter::Filter) -> Vec<Msg> {
    let mut kept: Vec<Msg> = msgs
        .into_iter()
        .filter(|m| {
            !filter.excludes(&crate::filter::Subject {
                from: &m.from,
                to: &m.to,
                method: &m.method,
                url: &m.url,
            })
        })
        .collect();
    for (i, m) in kept.iter_mut().enumerate() {
        m.number = i as u64 + 1;
    }
    kept
}

/// `http://host:port/a/b?q` -> `/a/b?q`.
pub fn path_of(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        },
        None if url.is_empty() => "?".to_owned(),
        None => url.to_owned(),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("line {line}: not a message title: {text}")]
    Title { line: usize, text: String },
    #[error("line {line}: {message}")]
    Json { line: usize, message: String },
    #[error("no messages found")]
    Empty,
}

/// Reads a numbered log (`### [N] (FROM) REQ >>> (TO) : ...`); the reference logs' unnumbered
/// titles (`### (FROM) ...`) are numbered in order.
pub fn from_log(text: &str) -> Result<Vec<Msg>, ReadError> {
    let title = Regex::new(r"^### (?:\[(\d+)\] )?\((.*?)\) (REQ >>>|RESP <<<) \((.*?)\) : (.*)$")
        .expect("valid regex");
    let lines: Vec<&str> = text.lines().collect();
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("### "))
        .map(|(i, _)| i)
        .collect();
    let mut out = Vec::new();
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        let caps = title
            .captures(lines[start])
            .ok_or_else(|| ReadError::Title {
                line: start + 1,
                text: lines[start].to_owned(),
            })?;
        let number = caps
            .get(1)
            .and_then(|n| n.as_str().parse().ok())
            .unwrap_or(out.len() as u64 + 1);
        let request = &caps[3] == "REQ >>>";
        let rest = caps[5].to_owned();
        let (method, url, status, reason) = if request {
            let (m, u) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
            (m.to_owned(), u.to_owned(), None, String::new())
        } else {
            parse_response_title(&rest)
        };
        let body_lines = &lines[start + 1..end];
        let blank = body_lines
            .iter()
            .position(|l| l.is_empty())
            .unwrap_or(body_lines.len());
        let headers = body_lines[..blank]
            .iter()
            .map(|h| {
                let (n, v) = h.split_once(':').unwrap_or((h, ""));
                (n.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned())
            })
            .collect();
        let mut body: Vec<&str> = body_lines.get(blank + 1..).unwrap_or_default().to_vec();
        while body.last().is_some_and(|l| l.is_empty()) {
            body.pop();
        }
        // The notes before the body: the served path is taken out (it is not the body), the
        // marks stay where a reader of the body page expects them.
        let mut served = None;
        let mut marks = Vec::new();
        let mut k = 0;
        while k < body.len() && body[k].starts_with('[') && body[k].ends_with(']') {
            if let Some(s) = parse_served_note(body[k]) {
                served = Some(s);
                body.remove(k);
            } else {
                marks.push(body[k].to_owned());
                k += 1;
            }
        }
        out.push(Msg {
            number,
            request,
            from: caps[2].to_owned(),
            to: caps[4].to_owned(),
            method,
            url,
            status,
            reason,
            headers,
            body: body.join("\n"),
            exchange: None,
            via: served.as_ref().map(|(_, v)| v.clone()),
            served: served.map(|(t, _)| t),
            marks,
            meta: None,
        });
    }
    if out.is_empty() {
        return Err(ReadError::Empty);
    }
    Ok(out)
}

/// `200 OK GET http://x/y`, `300 MULTIPLE CHOICES GET http://x/`, `200 OK ? (request not seen)`.
fn parse_response_title(rest: &str) -> (String, String, Option<u16>, String) {
    let (status, after) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = status.parse().ok();
    if let Some(reason) = after.strip_suffix(" ? (request not seen)") {
        return ("?".into(), String::new(), status, reason.to_owned());
    }
    let mut words: Vec<&str> = after.split(' ').collect();
    let url = if words.len() >= 2 {
        words.pop().unwrap_or("")
    } else {
        ""
    };
    let method = if words.len() >= 2 {
        words.pop().unwrap_or("")
    } else {
        ""
    };
    (method.to_owned(), url.to_owned(), status, words.join(" "))
}

/// Reads the JSONL (one exchange per line) into its numbered messages, in number order.
pub fn from_jsonl(text: &str) -> Result<Vec<Msg>, ReadError> {
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| ReadError::Json {
            line: i + 1,
            message: e.to_string(),
        })?;
        let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
        let served = v["upstream"]["target"].as_str().map(str::to_owned);
        let via = v["via"].as_str().map(str::to_owned);
        for (key, request) in [("request", true), ("response", false)] {
            let m = &v[key];
            let Some(number) = m["number"].as_u64() else {
                continue;
            };
            let u = |k: &str| m[k].as_u64().unwrap_or(0);
            let mut marks = Vec::new();
            if m["complete"] == false {
                marks.push(match m["broken"].as_str() {
                    Some(r) => format!("[broken: {r}]"),
                    None => "[incomplete: the connection ended before this message did]".into(),
                });
            }
            if m["after_gap"] == true {
                marks.push("[bytes were lost on this connection before this message]".into());
            }
            if !request && v["orphan"] == true {
                marks.push("[the request this answers was not seen]".into());
            }
            let headers = m["headers"]
                .as_array()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h[0].as_str().unwrap_or("").to_owned(),
                                h[1].as_str().unwrap_or("").to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Msg {
                number,
                request,
                from: s("from"),
                to: s("to"),
                method: s("method"),
                url: s("url"),
                status: if request {
                    None
                } else {
                    v["status"].as_u64().map(|n| n as u16)
                },
                reason: if request { String::new() } else { s("reason") },
                headers,
                body: m["body"].as_str().unwrap_or("").to_owned(),
                exchange: v["id"].as_u64(),
                served: served.clone(),
                via: via.clone(),
                marks,
                meta: Some(Meta {
                    first_ns: u("first_ts_ns"),
                    last_ns: u("last_ts_ns"),
                    unix_ns: m["first_unix_ns"]
                        .as_i64()
                        .map(i128::from)
                        .or_else(|| m["first_unix_ns"].as_u64().map(i128::from))
                        .unwrap_or(0),
                    body_size: u("body_size"),
                    body_missing: u("body_missing"),
                    body_lost: u("body_lost"),
                    truncated: m["body_truncated"] == true,
                }),
            });
        }
    }
    if out.is_empty() {
        return Err(ReadError::Empty);
    }
    out.sort_by_key(|m| m.number);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\n### [1] (openstack) REQ >>> (keystone) : GET http://127.0.0.1/identity/\nHost: 127.0.0.1\nAccept: application/json\n\nnone\n\n\n### [2] (openstack) RESP <<< (keystone) : 300 MULTIPLE CHOICES GET http://127.0.0.1/identity/\nContent-Type: application/json\n\n{\n  \"a\": 1\n}\n\n\n### [3] (glance-api) RESP <<< (keystone) : 200 OK ? (request not seen)\n\nnone\n\n";

    #[test]
    fn numbered_log_entries() {
        let m = from_log(LOG).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].number, m[0].request, m[0].method.as_str()),
            (1, true, "GET")
        );
        assert_eq!(m[0].path(), "/identity/");
        assert_eq!(
            m[0].headers,
            vec![
                ("Host".into(), "127.0.0.1".into()),
                ("Accept".into(), "application/json".into())
            ]
        );
        assert_eq!(m[0].body, "none");
        assert_eq!(
            (m[1].status, m[1].reason.as_str(), m[1].method.as_str()),
            (Some(300), "MULTIPLE CHOICES", "GET")
        );
        assert_eq!(m[1].body, "{\n  \"a\": 1\n}");
        assert_eq!(
            (m[2].status, m[2].reason.as_str(), m[2].path().as_str()),
            (Some(200), "OK", "?")
        );
    }

    #[test]
    fn reference_titles_without_numbers() {
        let m = from_log("\n### (openstack) REQ >>> (glance-api) : POST http://127.0.0.1:60999/v2/images\nHost: x\n\nnone\n\n\n### (openstack) RESP <<< (glance-api) : 201 Created POST http://127.0.0.1:60999/v2/images\n\nnone\n").unwrap();
        assert_eq!(m.iter().map(|x| x.number).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(m[1].reason, "Created");
    }

    #[test]
    fn bad_titles_and_empty_input_are_errors() {
        assert_eq!(
            from_log("### nonsense\n"),
            Err(ReadError::Title {
                line: 1,
                text: "### nonsense".into()
            })
        );
        assert_eq!(from_log("just text\n"), Err(ReadError::Empty));
        assert!(matches!(
            from_jsonl("{bad"),
            Err(ReadError::Json { line: 1, .. })
        ));
    }

    #[test]
    fn jsonl_exchanges_to_messages() {
        let line = r#"{"id":4,"from":"a","to":"b","method":"GET","url":"http://h/x","status":204,"reason":"No Content","request":{"number":2,"headers":[["Host","h"]],"body":"none"},"response":{"number":3,"headers":[],"body":"none"}}"#;
        let m = from_jsonl(line).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].number, m[0].request, m[0].exchange),
            (2, true, Some(4))
        );
        assert_eq!(
            (m[1].status, m[1].reason.as_str()),
            (Some(204), "No Content")
        );
    }

    #[test]
    fn filtered_messages_are_left_out_and_the_rest_renumbered() {
        let f = crate::filter::Filter::parse(
            r#"{"filters": [{"to": "keystone", "method": "GET"}]}"#,
            "f",
        )
        .unwrap();
        let m = without(from_log(LOG).unwrap(), &f);
        assert_eq!(
            m.len(),
            1,
            "the two GETs to keystone go, the unpaired response stays"
        );
        assert_eq!((m[0].number, m[0].from.as_str()), (1, "glance-api"));
        let f =
            crate::filter::Filter::parse(r#"{"filters": [{"from": "glance-api"}]}"#, "f").unwrap();
        let m = without(from_log(LOG).unwrap(), &f);
        assert_eq!(m.iter().map(|x| x.number).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn the_served_note_gives_the_services_path_and_leaves_the_body() {
        let log = "\n### [1] (openstack) REQ >>> (glance-api) : GET http://127.0.0.1/image/v2/images?limit=2\nHost: 127.0.0.1\n\n[served as /v2/images?limit=2 via apache2]\nnone\n\n\n### [2] (openstack) RESP <<< (glance-api) : 200 OK GET http://127.0.0.1/image/v2/images?limit=2\n\n[incomplete: the connection ended before this message did]\n[served as /v2/images?limit=2 via apache2]\n{}\n";
        let m = from_log(log).unwrap();
        assert_eq!(m[0].served.as_deref(), Some("/v2/images?limit=2"));
        assert_eq!(m[0].via.as_deref(), Some("apache2"));
        assert_eq!(m[0].body, "none");
        assert!(m[0].marks.is_empty());
        assert_eq!(
            m[1].marks,
            ["[incomplete: the connection ended before this message did]"]
        );
        assert_eq!(
            m[1].body,
            "[incomplete: the connection ended before this message did]\n{}"
        );
        assert_eq!(m[0].shown_path(Paths::Client), "/image/v2/images?limit=2");
        assert_eq!(m[0].shown_path(Paths::Served), "/v2/images?limit=2");
        let d = crate::diagram::mermaid::draw(
            &m,
            crate::diagram::mermaid::Options {
                paths: Paths::Served,
                ..Default::default()
            },
        );
        assert_eq!(
            d.text,
            "openstack->>glance-api: GET /v2/images?limit=2\nglance-api-->>openstack: 200 OK /v2/images?limit=2\n"
        );
        // The note is the log's own line: it reads back.
        assert_eq!(
            parse_served_note(&served_note("/v2/images", "apache2")),
            Some(("/v2/images".into(), "apache2".into()))
        );
        assert_eq!(parse_served_note("[served as  via x]"), None);
    }

    #[test]
    fn paths_without_scheme_and_host() {
        assert_eq!(path_of("http://h:1/a/b?c=d"), "/a/b?c=d");
        assert_eq!(path_of("http://h"), "/");
        assert_eq!(path_of(""), "?");
    }
}
