//! HTTP Archive 1.2 of the exchanges, so a run opens in browser devtools or any HAR viewer.
//!
//! Built from the JSONL records (the live `--har` sink makes the same records first), with
//! times from the kernel timestamps converted to wall clock.
use std::io;

use serde::Serialize;
use serde_json::{Value, json};

use crate::record::{ExchangeRecord, MessageRecord};

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

/// A name and a value: a header field, a query parameter.
#[derive(Serialize)]
struct Pair<'a> {
    name: &'a str,
    value: &'a str,
}

fn headers(hs: &[(String, String)]) -> Vec<Pair<'_>> {
    hs.iter()
        .map(|(name, value)| Pair { name, value })
        .collect()
}

fn header<'a>(m: &'a MessageRecord, name: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn query(url: &str) -> Vec<Pair<'_>> {
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

/// Milliseconds between two kernel times (never negative; 0 when one is not known).
fn ms(from: Option<u64>, to: Option<u64>) -> f64 {
    match (from, to) {
        (Some(a), Some(b)) if b >= a => (b - a) as f64 / 1e6,
        _ => 0.0,
    }
}

/// A body as the entry shows it: none is null.
fn body_text(m: &MessageRecord) -> Option<&str> {
    (m.body != "none").then_some(m.body.as_str())
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
    from: &'a str,
    #[serde(rename = "_to")]
    to: &'a str,
    #[serde(rename = "_incomplete")]
    incomplete: bool,
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
    method: &'a str,
    url: &'a str,
    http_version: &'static str,
    cookies: [(); 0],
    headers: Vec<Pair<'a>>,
    query_string: Vec<Pair<'a>>,
    headers_size: i64,
    body_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    post_data: Option<PostData<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostData<'a> {
    mime_type: &'a str,
    text: Option<&'a str>,
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
    status: Option<u16>,
    status_text: Option<&'a str>,
    http_version: &'static str,
    cookies: [(); 0],
    headers: Vec<Pair<'a>>,
    content: Content<'a>,
    #[serde(rename = "redirectURL")]
    redirect_url: &'a str,
    headers_size: i64,
    body_size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Content<'a> {
    size: u64,
    mime_type: &'a str,
    text: Option<&'a str>,
}

/// One HAR entry from one exchange record; None for an exchange without its request.
fn entry(x: &ExchangeRecord) -> Option<Entry<'_>> {
    let req = x.request.as_ref()?;
    let resp = x.response.as_ref();
    let send = ms(Some(req.first_ts_ns), Some(req.last_ts_ns));
    let wait = ms(Some(req.last_ts_ns), resp.map(|r| r.first_ts_ns));
    let receive = ms(resp.map(|r| r.first_ts_ns), resp.map(|r| r.last_ts_ns));
    let request = Request {
        method: &x.method,
        url: &x.url,
        http_version: "HTTP/1.1",
        cookies: [],
        headers: headers(&req.headers),
        query_string: query(&x.url),
        headers_size: -1,
        body_size: req.body_size,
        post_data: (req.body_size > 0).then(|| PostData {
            mime_type: header(req, "content-type").unwrap_or(""),
            text: body_text(req),
        }),
    };
    let response = match resp {
        Some(resp) => Response::Answered(Answered {
            status: x.status,
            status_text: x.reason.as_deref(),
            http_version: "HTTP/1.1",
            cookies: [],
            headers: headers(&resp.headers),
            content: Content {
                size: resp.body_size,
                mime_type: header(resp, "content-type").unwrap_or(""),
                text: body_text(resp),
            },
            redirect_url: header(resp, "location").unwrap_or(""),
            headers_size: -1,
            body_size: resp.body_size,
        }),
        None => Response::Unanswered(json!({
            "status": 0, "statusText": "", "httpVersion": "HTTP/1.1", "cookies": [], "headers": [],
            "content": {"size": 0, "mimeType": ""}, "redirectURL": "", "headersSize": -1, "bodySize": -1,
        })),
    };
    let server_ip = x
        .server
        .as_ref()
        .map(|e| e.local.as_str())
        .filter(|a| !a.is_empty())
        .or(x.client.as_ref().map(|e| e.peer.as_str()))
        .and_then(|a| {
            a.rsplit_once(':')
                .map(|(ip, _)| ip.trim_matches(['[', ']']))
        });
    Some(Entry {
        started_date_time: iso8601(req.first_unix_ns),
        time: send + wait + receive,
        request,
        response,
        cache: Empty {},
        timings: Timings {
            send,
            wait,
            receive,
        },
        from: &x.from,
        to: &x.to,
        incomplete: x.incomplete,
        server_ip,
    })
}

/// How deep an entry sits in the document: in `log.entries`, three levels of two spaces.
const ENTRY_INDENT: usize = 6;
const SPACES: [u8; 64] = [b' '; 64];

/// serde_json's pretty layout (two spaces a level, `": "` after keys, `[]` and `{}` when
/// empty) shifted right by [`ENTRY_INDENT`], written straight into the document's buffer.
#[derive(Default)]
struct Indented {
    level: usize,
    has_value: bool,
}

impl Indented {
    fn newline<W: ?Sized + io::Write>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(b"\n")?;
        let mut n = ENTRY_INDENT + 2 * self.level;
        while n > 0 {
            let k = n.min(SPACES.len());
            w.write_all(&SPACES[..k])?;
            n -= k;
        }
        Ok(())
    }

    fn open<W: ?Sized + io::Write>(&mut self, w: &mut W, c: &[u8]) -> io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(c)
    }

    fn close<W: ?Sized + io::Write>(&mut self, w: &mut W, c: &[u8]) -> io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(c)
    }

    fn item<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(b",")?;
        }
        self.newline(w)
    }
}

impl serde_json::ser::Formatter for Indented {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
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
    pub fn entry(&mut self, b: &mut Vec<u8>, record: &ExchangeRecord) -> io::Result<bool> {
        let Some(e) = entry(record) else {
            return Ok(false);
        };
        b.extend_from_slice(if self.entries == 0 { b"\n" } else { b",\n" });
        b.extend_from_slice(&SPACES[..ENTRY_INDENT]);
        let mut ser = serde_json::Serializer::with_formatter(&mut *b, Indented::default());
        e.serialize(&mut ser)?;
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
pub fn document(records: &[ExchangeRecord]) -> io::Result<Vec<u8>> {
    let mut b = Vec::new();
    let mut s = HarStream::default();
    HarStream::head(&mut b);
    for r in records {
        s.entry(&mut b, r)?;
    }
    s.tail(&mut b);
    Ok(b)
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
        let rec: ExchangeRecord = serde_json::from_str(
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

    fn record(id: u64, url: &str) -> ExchangeRecord {
        serde_json::from_value(json!({"id": id, "from": "a", "to": "b", "method": "GET", "url": url, "status": 200,
            "reason": "OK", "client": null, "server": {"local": "127.0.0.1:80"},
            "request": {"first_ts_ns": 1, "last_ts_ns": 2, "first_unix_ns": 0, "headers": [],
                "body_size": 0, "body": "none"},
            "response": {"first_ts_ns": 3, "last_ts_ns": 4, "headers": [["Content-Type", "text/plain"]],
                "body_size": 2, "body": "ok"},
            "incomplete": false}))
        .unwrap()
    }

    #[test]
    fn a_streamed_document_is_the_whole_document_entry_by_entry() {
        let recs = [
            record(1, "http://h/a"),
            serde_json::from_value(json!({"id": 2, "request": null})).unwrap(),
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
        // As a pretty-printer writes the whole document (the keys keep their order): nested
        // objects, empty and full arrays, an unanswered request, escapes in a body.
        let mut unanswered = record(3, "http://h/y?a=1&b");
        unanswered.response = None;
        unanswered.status = None;
        if let Some(r) = unanswered.request.as_mut() {
            r.body = "line\n\"two\"\t\u{1}".into();
            r.body_size = 9;
        }
        let recs = [record(1, "http://h/"), record(2, "http://h/x"), unanswered];
        let whole = json!({"log": {
            "version": "1.2",
            "creator": {"name": "sniffer", "version": env!("CARGO_PKG_VERSION")},
            "entries": recs.iter().map(|r| serde_json::to_value(entry(r).unwrap()).unwrap()).collect::<Vec<_>>(),
        }});
        assert_eq!(
            String::from_utf8(document(&recs).unwrap()).unwrap(),
            serde_json::to_string_pretty(&whole).unwrap() + "\n"
        );
    }
}
