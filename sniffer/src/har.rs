//! HTTP Archive 1.2 of the exchanges, so a run opens in browser devtools or any HAR viewer.
//!
//! Built from the JSONL records (the live `--har` sink makes the same records first), with
//! times from the kernel timestamps converted to wall clock.
use std::io;

use serde::Serialize;
use serde_json::{Value, json};

/// `2026-11-24T06:45:14.123Z` for a time in ns since the Unix epoch.
pub fn iso8601(unix_ns: i128) -> String {
    let ms_total = unix_ns.div_euclid(1_000_000);
    let secs = ms_total.div_euclid(1000);
    let ms = ms_total.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// A name and a value: a header field (JSON values of the record), a query parameter (text).
#[derive(Serialize)]
struct Pair<V> {
    name: V,
    value: V,
}

fn headers(v: &Value) -> Vec<Pair<&Value>> {
    v.as_array()
        .map(|hs| {
            hs.iter()
                .map(|h| Pair {
                    name: &h[0],
                    value: &h[1],
                })
                .collect()
        })
        .unwrap_or_default()
}

fn header<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.as_array()?
        .iter()
        .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .and_then(|h| h[1].as_str())
}

fn query(url: &str) -> Vec<Pair<&str>> {
    url.split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (name, value) = p.split_once('=').unwrap_or((p, ""));
                    Pair { name, value }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Milliseconds between two kernel times (never negative).
fn ms(from: &Value, to: &Value) -> f64 {
    match (from.as_u64(), to.as_u64()) {
        (Some(a), Some(b)) if b >= a => (b - a) as f64 / 1e6,
        _ => 0.0,
    }
}

/// A body as the entry shows it: none is null.
fn body_text(m: &Value) -> &Value {
    if m["body"] == "none" {
        &Value::Null
    } else {
        &m["body"]
    }
}

/// One HAR entry, borrowing from its JSONL record (fields in the order HAR viewers show).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    started_date_time: String,
    time: f64,
    request: Request<'a>,
    response: Response<'a>,
    cache: Empty,
    timings: Timings,
    #[serde(rename = "_from")]
    from: &'a Value,
    #[serde(rename = "_to")]
    to: &'a Value,
    #[serde(rename = "_incomplete")]
    incomplete: &'a Value,
    #[serde(rename = "serverIPAddress", skip_serializing_if = "Option::is_none")]
    server_ip: Option<&'a str>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Timings {
    send: f64,
    wait: f64,
    receive: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    method: &'a Value,
    url: &'a str,
    http_version: &'static str,
    cookies: [(); 0],
    headers: Vec<Pair<&'a Value>>,
    query_string: Vec<Pair<&'a str>>,
    headers_size: i64,
    body_size: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    post_data: Option<PostData<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostData<'a> {
    mime_type: &'a str,
    text: &'a Value,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Response<'a> {
    Answered(Answered<'a>),
    // HAR needs a response: an unanswered request gets status 0, as browsers write it.
    Unanswered(Value),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answered<'a> {
    status: &'a Value,
    status_text: &'a Value,
    http_version: &'static str,
    cookies: [(); 0],
    headers: Vec<Pair<&'a Value>>,
    content: Content<'a>,
    #[serde(rename = "redirectURL")]
    redirect_url: &'a str,
    headers_size: i64,
    body_size: &'a Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Content<'a> {
    size: &'a Value,
    mime_type: &'a str,
    text: &'a Value,
}

/// One HAR entry from one JSONL exchange record; None for an exchange without its request.
fn entry(x: &Value) -> Option<Entry<'_>> {
    let req = &x["request"];
    if !req.is_object() {
        return None;
    }
    let resp = &x["response"];
    let started = req["first_unix_ns"].as_i64().map_or(0, i128::from);
    let url = x["url"].as_str().unwrap_or("");
    let send = ms(&req["first_ts_ns"], &req["last_ts_ns"]);
    let wait = ms(&req["last_ts_ns"], &resp["first_ts_ns"]);
    let receive = ms(&resp["first_ts_ns"], &resp["last_ts_ns"]);
    let request = Request {
        method: &x["method"],
        url,
        http_version: "HTTP/1.1",
        cookies: [],
        headers: headers(&req["headers"]),
        query_string: query(url),
        headers_size: -1,
        body_size: &req["body_size"],
        post_data: (req["body_size"].as_u64().unwrap_or(0) > 0).then(|| PostData {
            mime_type: header(&req["headers"], "content-type").unwrap_or(""),
            text: body_text(req),
        }),
    };
    let response = if resp.is_object() {
        Response::Answered(Answered {
            status: &x["status"],
            status_text: &x["reason"],
            http_version: "HTTP/1.1",
            cookies: [],
            headers: headers(&resp["headers"]),
            content: Content {
                size: &resp["body_size"],
                mime_type: header(&resp["headers"], "content-type").unwrap_or(""),
                text: body_text(resp),
            },
            redirect_url: header(&resp["headers"], "location").unwrap_or(""),
            headers_size: -1,
            body_size: &resp["body_size"],
        })
    } else {
        Response::Unanswered(json!({
            "status": 0, "statusText": "", "httpVersion": "HTTP/1.1", "cookies": [], "headers": [],
            "content": {"size": 0, "mimeType": ""}, "redirectURL": "", "headersSize": -1, "bodySize": -1,
        }))
    };
    let server_ip = x["server"]["local"]
        .as_str()
        .or(x["client"]["peer"].as_str())
        .and_then(|a| {
            a.rsplit_once(':')
                .map(|(ip, _)| ip.trim_matches(['[', ']']))
        });
    Some(Entry {
        started_date_time: iso8601(started),
        time: send + wait + receive,
        request,
        response,
        cache: Empty {},
        timings: Timings {
            send,
            wait,
            receive,
        },
        from: &x["from"],
        to: &x["to"],
        incomplete: &x["incomplete"],
        server_ip,
    })
}

/// A HAR document written entry by entry as exchanges come (`--har`, `sniffer har`), so that
/// nothing is held in memory for the end: the head (version, creator, the opening of the
/// entries), each entry, then the tail that closes the document. Entries are indented as a
/// pretty-printed document would have them.
#[derive(Debug, Default)]
pub struct HarStream {
    /// Entries written so far.
    entries: u64,
}

impl HarStream {
    /// The document's opening, up to and with the `[` of its entries.
    pub fn head(b: &mut Vec<u8>) {
        b.extend_from_slice(
            concat!(
                "{\n  \"log\": {\n    \"version\": \"1.2\",\n    \"creator\": {\n      \"name\": ",
                "\"sniffer\",\n      \"version\": \"",
                env!("CARGO_PKG_VERSION"),
                "\"\n    },\n    \"entries\": ["
            )
            .as_bytes(),
        );
    }

    /// The entry of one JSONL exchange record, after a comma unless it is the first; nothing
    /// for an exchange without its request (false).
    pub fn entry(&mut self, b: &mut Vec<u8>, record: &Value) -> io::Result<bool> {
        let Some(e) = entry(record) else {
            return Ok(false);
        };
        let mut pretty = Vec::new();
        serde_json::to_writer_pretty(&mut pretty, &e)?;
        b.extend_from_slice(if self.entries == 0 { b"\n" } else { b",\n" });
        // JSON strings hold no raw newline, so every line break is the printer's.
        for (i, line) in pretty.split(|&c| c == b'\n').enumerate() {
            if i > 0 {
                b.push(b'\n');
            }
            b.extend_from_slice(b"      ");
            b.extend_from_slice(line);
        }
        self.entries += 1;
        Ok(true)
    }

    /// The document's close, after the last entry.
    pub fn tail(&self, b: &mut Vec<u8>) {
        if self.entries > 0 {
            b.extend_from_slice(b"\n    ");
        }
        b.extend_from_slice(b"]\n  }\n}\n");
    }
}

/// The whole HAR document for JSONL exchange records, as [`HarStream`] writes it.
pub fn document(records: &[Value]) -> io::Result<Vec<u8>> {
    let mut b = Vec::new();
    let mut s = HarStream::default();
    HarStream::head(&mut b);
    for r in records {
        s.entry(&mut b, r)?;
    }
    s.tail(&mut b);
    Ok(b)
}

/// Parses JSONL text into records, naming the line of the first that does not parse.
pub fn read_jsonl(text: &str) -> Result<Vec<Value>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso8601(1_795_000_000_123_456_789),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(iso8601(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn an_exchange_becomes_an_entry() {
        let rec: Value = serde_json::from_str(
            r#"{"id":1,"from":"openstack","to":"keystone","method":"POST","url":"http://127.0.0.1:5000/v3/auth/tokens?nocatalog","status":201,"reason":"CREATED",
                "client":{"pid":1,"local":"127.0.0.1:40000","peer":"127.0.0.1:5000","transport":"tcp"},"server":null,
                "request":{"number":1,"first_ts_ns":1000000,"last_ts_ns":2000000,"first_unix_ns":0,"headers":[["Content-Type","application/json"]],"body_size":2,"body":"{}"},
                "response":{"number":2,"first_ts_ns":5000000,"last_ts_ns":6000000,"headers":[["Location","http://x/"]],"body_size":0,"body":"none"},
                "incomplete":false}"#,
        )
        .unwrap();
        let har: Value = serde_json::from_slice(&document(&[rec]).unwrap()).unwrap();
        let e = &har["log"]["entries"][0];
        assert_eq!(har["log"]["version"], "1.2");
        assert_eq!(e["startedDateTime"], "1970-01-01T00:00:00.000Z");
        assert_eq!(e["time"], 5.0);
        assert_eq!(
            e["timings"],
            json!({"send": 1.0, "wait": 3.0, "receive": 1.0})
        );
        assert_eq!(
            e["request"]["queryString"],
            json!([{"name": "nocatalog", "value": ""}])
        );
        assert_eq!(e["request"]["postData"]["mimeType"], "application/json");
        assert_eq!(e["response"]["redirectURL"], "http://x/");
        assert_eq!(e["response"]["content"]["text"], Value::Null);
        assert_eq!(e["serverIPAddress"], "127.0.0.1");
    }

    fn record(id: u64, url: &str) -> Value {
        json!({"id": id, "from": "a", "to": "b", "method": "GET", "url": url, "status": 200,
            "reason": "OK", "client": null, "server": {"local": "127.0.0.1:80"},
            "request": {"first_ts_ns": 1, "last_ts_ns": 2, "first_unix_ns": 0, "headers": [],
                "body_size": 0, "body": "none"},
            "response": {"first_ts_ns": 3, "last_ts_ns": 4, "headers": [["Content-Type", "text/plain"]],
                "body_size": 2, "body": "ok"},
            "incomplete": false})
    }

    #[test]
    fn a_streamed_document_is_the_whole_document_entry_by_entry() {
        let recs = [
            record(1, "http://h/a"),
            json!({"id": 2, "request": null}),
            record(3, "http://h/b?x=1"),
        ];
        let doc: Value = serde_json::from_slice(&document(&recs).unwrap()).unwrap();
        let want = json!({"log": {
            "version": "1.2",
            "creator": {"name": "sniffer", "version": env!("CARGO_PKG_VERSION")},
            "entries": [serde_json::to_value(entry(&recs[0]).unwrap()).unwrap(), serde_json::to_value(entry(&recs[2]).unwrap()).unwrap()],
        }});
        assert_eq!(doc, want, "the exchange without a request has no entry");
    }

    #[test]
    fn an_empty_document_and_the_entries_indent() {
        let empty = String::from_utf8(document(&[]).unwrap()).unwrap();
        assert_eq!(
            empty,
            format!(
                "{{\n  \"log\": {{\n    \"version\": \"1.2\",\n    \"creator\": {{\n      \
                 \"name\": \"sniffer\",\n      \"version\": \"{}\"\n    }},\n    \"entries\": \
                 []\n  }}\n}}\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        // As a pretty-printer writes the whole document (the keys keep their order).
        let recs = [record(1, "http://h/"), record(2, "http://h/x")];
        let whole = json!({"log": {
            "version": "1.2",
            "creator": {"name": "sniffer", "version": env!("CARGO_PKG_VERSION")},
            "entries": [serde_json::to_value(entry(&recs[0]).unwrap()).unwrap(), serde_json::to_value(entry(&recs[1]).unwrap()).unwrap()],
        }});
        assert_eq!(
            String::from_utf8(document(&recs).unwrap()).unwrap(),
            serde_json::to_string_pretty(&whole).unwrap() + "\n"
        );
    }
}
