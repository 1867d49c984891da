//! The record of one exchange: a line of the JSONL a run writes (`--jsonl`), what `sniffer
//! merge` reads and writes, what `sniffer har` and the diagram read, and what OTLP spans are
//! made from. Fields are only ever added, at the end of their object, so older files still
//! read (a field they lack takes its default).
use serde::{Deserialize, Serialize};

/// The machine a view was captured on: its name and the boot it was in (the kernel's
/// `/proc/sys/kernel/random/boot_id`): kernel times are only comparable within one boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub boot_id: String,
}

impl Host {
    /// This machine: its hostname (or `name` when given) and its boot id.
    pub fn this(name: Option<&str>) -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let name = name.map_or_else(|| read("/proc/sys/kernel/hostname"), str::to_owned);
        Self {
            name: if name.is_empty() {
                "localhost".into()
            } else {
                name
            },
            boot_id: read("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// One end of an exchange as its host saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndRecord {
    pub pid: u32,
    pub local: String,
    pub peer: String,
    pub transport: String,
    /// The socket's network namespace (its inode number), when the kernel told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Host>,
}

/// A reverse proxy's upstream hop folded into the exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamRecord {
    pub server: Option<EndRecord>,
    pub target: Option<String>,
}

/// One message (request or response).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageRecord {
    pub number: Option<u64>,
    /// Kernel (CLOCK_MONOTONIC) time of the first byte (the earlier of both ends' views) and
    /// of the last byte. In a merged file: ns since the Unix epoch on the merged timeline.
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    /// The first byte in ns since the Unix epoch (this host's wall clock).
    pub first_unix_ns: i128,
    pub headers: Vec<(String, String)>,
    pub body_size: u64,
    pub body_missing: u64,
    pub body_lost: u64,
    pub body_truncated: bool,
    /// The body as the log shows it.
    pub body: String,
    pub complete: bool,
    pub broken: Option<String>,
    pub after_gap: bool,
    /// Chunked trailer fields, as text.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trailers: Vec<String>,
    /// What the RFCs call invalid that was read anyway (a bare LF, ...); left out when nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lenient: Vec<String>,
}

impl MessageRecord {
    /// The last byte in ns since the Unix epoch.
    pub fn last_unix_ns(&self) -> i128 {
        self.first_unix_ns + (i128::from(self.last_ts_ns) - i128::from(self.first_ts_ns))
    }
}

/// One exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExchangeRecord {
    pub id: u64,
    pub from: String,
    pub to: String,
    /// The reverse proxy between the two, its hop folded into this exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The proxy's upstream hop folded into this exchange: the service's end and the target
    /// the proxy sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamRecord>,
    pub client: Option<EndRecord>,
    pub server: Option<EndRecord>,
    pub method: String,
    pub url: String,
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub request: Option<MessageRecord>,
    pub response: Option<MessageRecord>,
    pub interim_statuses: Vec<u16>,
    pub incomplete: bool,
    pub orphan: bool,
    pub unanswered: bool,
    pub broken: Option<String>,
    /// Read as TLS plaintext in the TLS library (the URL is https).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

impl ExchangeRecord {
    pub fn message(&self, request: bool) -> Option<&MessageRecord> {
        if request {
            self.request.as_ref()
        } else {
            self.response.as_ref()
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("line {line}: not an exchange record: {message}")]
    Json { line: usize, message: String },
    #[error("no exchange records in it")]
    Empty,
}

/// The records of a JSONL text, one per non-blank line.
pub fn read_jsonl(text: &str) -> Result<Vec<ExchangeRecord>, ReadError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r = serde_json::from_str(line).map_err(|e| ReadError::Json {
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(r);
    }
    if out.is_empty() {
        return Err(ReadError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as a run before hosts, namespaces and trailers were recorded wrote it.
    const OLD: &str = r#"{"id":3,"from":"openstack","to":"keystone","client":{"pid":10,"local":"127.0.0.1:40000","peer":"127.0.0.1:5000","transport":"tcp"},"server":null,"method":"GET","url":"http://127.0.0.1:5000/v3","status":200,"reason":"OK","request":{"number":1,"first_ts_ns":100,"last_ts_ns":150,"first_unix_ns":1000100,"headers":[["Host","127.0.0.1:5000"]],"body_size":0,"body_missing":0,"body_lost":0,"body_truncated":false,"body":"none","complete":true,"broken":null,"after_gap":false},"response":null,"interim_statuses":[],"incomplete":false,"orphan":false,"unanswered":false,"broken":null}"#;

    #[test]
    fn older_lines_read_and_write_back_the_same() {
        let recs = read_jsonl(&format!("{OLD}\n\n")).unwrap();
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(r.client.as_ref().unwrap().host, None);
        assert_eq!(r.request.as_ref().unwrap().last_unix_ns(), 1000150);
        assert_eq!(serde_json::to_string(r).unwrap(), OLD);
    }

    #[test]
    fn new_fields_come_last_and_only_when_known() {
        let mut r = read_jsonl(OLD).unwrap().remove(0);
        let c = r.client.as_mut().unwrap();
        c.netns = Some(4026531840);
        c.host = Some(Host {
            name: "compute1".into(),
            boot_id: "b0".into(),
        });
        let line = serde_json::to_string(&r).unwrap();
        assert!(
            line.contains(
                r#""transport":"tcp","netns":4026531840,"host":{"name":"compute1","boot_id":"b0"}}"#
            ),
            "{line}"
        );
    }

    #[test]
    fn bad_lines_name_their_number() {
        assert_eq!(read_jsonl("  \n"), Err(ReadError::Empty));
        match read_jsonl(&format!("{OLD}\n{{\"id\":\"x\"}}\n")) {
            Err(ReadError::Json { line: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
