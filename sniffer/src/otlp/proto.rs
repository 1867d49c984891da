//! The protobuf encoding of OTLP trace export requests, written by hand: the few messages of
//! `opentelemetry/proto/collector/trace/v1/trace_service.proto` and the files it imports that
//! sniffer sends, and the response's partial success. Field numbers are the `.proto` files'.
//!
//! Wire format (protobuf encoding guide): a field is a key `(number << 3) | wire type`
//! followed by a varint (type 0), 8 little-endian bytes (type 1), a varint length and that
//! many bytes (type 2: strings, bytes, embedded messages) or 4 bytes (type 5). As proto3 does,
//! fields holding their default value (0, empty) are left out.
use super::spans::{Kind, Span, StatusCode, Value};

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// A protobuf message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, I64);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        if !b.is_empty() {
            self.key(field, LEN);
            self.varint(b.len() as u64);
            self.0.extend_from_slice(b);
        }
    }

    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    /// An embedded message, written even when empty (its presence can mean something).
    fn message(&mut self, field: u32, m: Msg) {
        self.key(field, LEN);
        self.varint(m.0.len() as u64);
        self.0.extend_from_slice(&m.0);
    }
}

/// `common.v1.KeyValue { string key = 1; AnyValue value = 2; }`, `AnyValue { string
/// string_value = 1; int64 int_value = 3; }`.
fn key_value(key: &str, value: &Value) -> Msg {
    let mut any = Msg::default();
    match value {
        Value::Str(s) => {
            // A oneof member is written even when empty: it says which member is set.
            any.key(1, LEN);
            any.varint(s.len() as u64);
            any.0.extend_from_slice(s.as_bytes());
        }
        Value::Int(i) => {
            // int64: a negative value takes ten bytes (two's complement), as protobuf says.
            any.key(3, VARINT);
            any.varint(*i as u64);
        }
    }
    let mut kv = Msg::default();
    kv.string(1, key);
    kv.message(2, any);
    kv
}

/// `trace.v1.Span`.
fn span(s: &Span) -> Msg {
    let mut m = Msg::default();
    m.bytes(1, &s.trace_id);
    m.bytes(2, &s.span_id);
    if let Some(p) = &s.parent {
        m.bytes(4, p);
    }
    m.string(5, &s.name);
    m.uint(
        6,
        match s.kind {
            Kind::Server => 2,
            Kind::Client => 3,
        },
    );
    m.fixed64(7, s.start_unix_ns);
    m.fixed64(8, s.end_unix_ns);
    for (k, v) in &s.attributes {
        m.message(9, key_value(k, v));
    }
    // `Status { string message = 2; StatusCode code = 3; }`; unset stays out.
    if s.status != StatusCode::Unset {
        let mut st = Msg::default();
        st.string(2, &s.status_message);
        st.uint(
            3,
            match s.status {
                StatusCode::Unset => 0,
                StatusCode::Ok => 1,
                StatusCode::Error => 2,
            },
        );
        m.message(15, st);
    }
    m
}

/// `collector.trace.v1.ExportTraceServiceRequest` for `spans`: one `ResourceSpans` per
/// resource (in order of first appearance), each with one `ScopeSpans` of scope
/// `scope`/`version`.
pub fn export_request(spans: &[Span], scope: &str, version: &str) -> Vec<u8> {
    let mut groups: Vec<(&super::spans::Resource, Vec<&Span>)> = Vec::new();
    for s in spans {
        match groups.iter_mut().find(|(r, _)| **r == s.resource) {
            Some((_, list)) => list.push(s),
            None => groups.push((&s.resource, vec![s])),
        }
    }
    let mut req = Msg::default();
    for (resource, list) in groups {
        // `resource.v1.Resource { repeated KeyValue attributes = 1; }`
        let mut res = Msg::default();
        for (k, v) in resource.attributes() {
            res.message(1, key_value(k, &v));
        }
        // `InstrumentationScope { string name = 1; string version = 2; }`
        let mut sc = Msg::default();
        sc.string(1, scope);
        sc.string(2, version);
        // `ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }`
        let mut ss = Msg::default();
        ss.message(1, sc);
        for s in list {
            ss.message(2, span(s));
        }
        // `ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }`
        let mut rs = Msg::default();
        rs.message(1, res);
        rs.message(2, ss);
        req.message(1, rs);
    }
    req.0
}

/// What a backend's `ExportTraceServiceResponse` says: spans it rejected and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartialSuccess {
    pub rejected_spans: i64,
    pub error_message: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated protobuf")]
    Truncated,
    #[error("unsupported protobuf wire type {0}")]
    WireType(u8),
}

/// Reads protobuf fields: (number, wire type, the varint or the bytes).
struct Reader<'a> {
    buf: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Truncated)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, DecodeError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = (key & 7) as u8;
        let f = match wire {
            VARINT => Field::Varint(self.varint()?),
            I64 => {
                self.take(8)?;
                Field::Fixed
            }
            LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
                Field::Bytes(self.take(n)?)
            }
            I32 => {
                self.take(4)?;
                Field::Fixed
            }
            w => return Err(DecodeError::WireType(w)),
        };
        Ok(Some((key >> 3, f)))
    }
}

/// `ExportTraceServiceResponse { ExportTracePartialSuccess partial_success = 1; }`,
/// `ExportTracePartialSuccess { int64 rejected_spans = 1; string error_message = 2; }`.
/// Unknown fields are skipped; an empty body is full success.
pub fn export_response(body: &[u8]) -> Result<PartialSuccess, DecodeError> {
    let mut out = PartialSuccess::default();
    let mut r = Reader { buf: body };
    while let Some((n, f)) = r.next()? {
        if let (1, Field::Bytes(inner)) = (n, f) {
            let mut p = Reader { buf: inner };
            while let Some((n, f)) = p.next()? {
                match (n, f) {
                    (1, Field::Varint(v)) => out.rejected_spans = v as i64,
                    (2, Field::Bytes(b)) => {
                        out.error_message = String::from_utf8_lossy(b).into_owned()
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::spans::Resource;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn varints_and_negative_ints() {
        let mut m = Msg::default();
        m.varint(1);
        m.varint(300);
        m.varint(u64::MAX);
        assert_eq!(hex(&m.0), "01ac02ffffffffffffffffff01");
        assert_eq!(
            hex(&key_value("n", &Value::Int(-1)).0),
            "0a016e120b18ffffffffffffffffff01"
        );
        let mut m = Msg::default();
        m.uint(3, 0);
        m.string(1, "");
        assert!(m.0.is_empty(), "defaults are left out");
    }

    #[test]
    fn key_values_of_both_kinds() {
        assert_eq!(
            hex(&key_value("a", &Value::Str("bc".into())).0),
            // key "a", value { string_value "bc" }
            "0a016112040a026263"
        );
        assert_eq!(
            hex(&key_value("p", &Value::Int(5000)).0),
            // key "p", value { int_value 5000 }
            "0a01701203188827"
        );
        // An empty string value is still a string value.
        assert_eq!(
            hex(&key_value("e", &Value::Str(String::new())).0),
            "0a016512020a00"
        );
    }

    fn sample_span() -> Span {
        Span {
            trace_id: [0x11; 16],
            span_id: [0x22; 8],
            parent: Some([0x33; 8]),
            name: "GET /v3".into(),
            kind: Kind::Client,
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 1_000_000_500,
            attributes: vec![("http.response.status_code", Value::Int(200))],
            status: StatusCode::Error,
            status_message: String::new(),
            resource: Resource {
                service: "openstack".into(),
                host: "h".into(),
                pid: 7,
            },
        }
    }

    #[test]
    fn a_span_byte_for_byte() {
        let expected = [
            // trace_id (1), span_id (2), parent_span_id (4)
            "0a10",
            "11111111111111111111111111111111",
            "1208",
            "2222222222222222",
            "2208",
            "3333333333333333",
            // name (5) "GET /v3", kind (6) CLIENT = 3
            "2a07",
            "474554202f7633",
            "3003",
            // start (7) and end (8), fixed64 little-endian
            "39",
            "00ca9a3b00000000",
            "41",
            "f4cb9a3b00000000",
            // attributes (9): http.response.status_code = 200
            "4a20",
            "0a19",
            "687474702e726573706f6e73652e7374617475735f636f6465",
            "1203",
            "18c801",
            // status (15): code ERROR = 2, no message
            "7a02",
            "1802",
        ]
        .concat();
        assert_eq!(hex(&span(&sample_span()).0), expected);
    }

    #[test]
    fn a_request_groups_spans_by_resource() {
        let a = sample_span();
        let mut b = sample_span();
        b.parent = None;
        b.status = StatusCode::Unset;
        b.attributes.clear();
        let mut c = b.clone();
        c.resource.service = "keystone".into();
        let req = export_request(&[a.clone(), c.clone(), b.clone()], "sniffer", "1");
        // Two ResourceSpans: openstack's two spans, then keystone's one.
        let mut r = Reader { buf: &req };
        let mut groups = Vec::new();
        while let Some((n, f)) = r.next().unwrap() {
            let Field::Bytes(rs) = f else { panic!() };
            assert_eq!(n, 1);
            groups.push(rs.to_vec());
        }
        assert_eq!(groups.len(), 2);
        let scope_of = |rs: &[u8]| {
            let mut r = Reader { buf: rs };
            let (_, res) = r.next().unwrap().unwrap();
            let (_, ss) = r.next().unwrap().unwrap();
            let (Field::Bytes(res), Field::Bytes(ss)) = (res, ss) else {
                panic!()
            };
            (res.to_vec(), ss.to_vec())
        };
        let (res, ss) = scope_of(&groups[0]);
        let mut want_res = Msg::default();
        for (k, v) in a.resource.attributes() {
            want_res.message(1, key_value(k, &v));
        }
        assert_eq!(res, want_res.0);
        let mut want_ss = Msg::default();
        let mut sc = Msg::default();
        sc.string(1, "sniffer");
        sc.string(2, "1");
        want_ss.message(1, sc);
        want_ss.message(2, span(&a));
        want_ss.message(2, span(&b));
        assert_eq!(ss, want_ss.0);
        // The resource: service.name, host.name, process.pid.
        assert_eq!(
            hex(&res),
            [
                "0a1b",
                "0a0c",
                "736572766963652e6e616d65",
                "120b",
                "0a096f70656e737461636b",
                "0a10",
                "0a09",
                "686f73742e6e616d65",
                "1203",
                "0a0168",
                "0a11",
                "0a0b",
                "70726f636573732e706964",
                "1202",
                "1807",
            ]
            .concat()
        );
    }

    #[test]
    fn responses_partial_success_and_garbage() {
        assert_eq!(export_response(b""), Ok(PartialSuccess::default()));
        // partial_success { rejected_spans: 2, error_message: "no" }, then an unknown field.
        let body = [0x0a, 0x06, 0x08, 0x02, 0x12, 0x02, b'n', b'o', 0x10, 0x01];
        assert_eq!(
            export_response(&body),
            Ok(PartialSuccess {
                rejected_spans: 2,
                error_message: "no".into()
            })
        );
        assert_eq!(
            export_response(&[0x0a, 0x05, 0x08]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(export_response(&[0x0b]), Err(DecodeError::WireType(3)));
        assert_eq!(export_response(&[0x08, 0xff]), Err(DecodeError::Truncated));
    }
}
