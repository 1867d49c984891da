//! How a message's headers and body are shown: JSON pretty-printed with 2 spaces (as the
//! reference logs), text as is, binary as its size and first bytes in hex; gzip/deflate bodies
//! decoded first (bounded); secrets replaced by a short fingerprint so the same token can
//! still be followed from the response that issued it to the requests that use it.
use std::{
    borrow::Cow,
    io::{Read as _, Write as _},
};

use sha2::{Digest as _, Sha256};

use crate::http::{
    head::{Head, Header},
    message::Body,
};

/// Header fields whose values are secrets.
const SECRET_HEADERS: &[&str] = &[
    "x-auth-token",
    "x-subject-token",
    "x-service-token",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// JSON member names whose string values are secrets.
const SECRET_FIELDS: &[&str] = &["password", "secret"];

/// Bytes of a binary body shown in hex.
pub const BINARY_PREVIEW: usize = 32;
/// Most bytes a compressed preview may inflate to.
const MAX_INFLATED: u64 = 1 << 20;

/// `<redacted sha256:1a2b3c4d>`: the first 8 hex digits of the value's SHA-256.
pub fn fingerprint(value: &[u8]) -> String {
    let digest = Sha256::digest(value);
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("<redacted sha256:{hex}>")
}

pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// A header value for display: lossy UTF-8, or its fingerprint when secret and `redact`.
pub fn header_value<'a>(name: &str, value: &'a [u8], redact: bool) -> Cow<'a, str> {
    header_shown(&Header { name, value }, text_of(value), redact)
}

/// [`header_value`] of a field whose value was read as text already (`Fields::iter_text`).
pub fn header_shown<'a>(h: &Header<'_>, text: Cow<'a, str>, redact: bool) -> Cow<'a, str> {
    if redact && is_secret_header(h.name) && !h.value.is_empty() {
        Cow::Owned(fingerprint(h.value))
    } else {
        text
    }
}

/// Bytes as text: borrowed when valid UTF-8 (the usual case, checked without
/// `from_utf8_lossy`'s chunking), else with U+FFFD for each invalid sequence.
pub fn text_of(value: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(value),
    }
}

/// Replaces secret members' string values, at any depth.
fn redact_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let secret = SECRET_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(k));
                match val {
                    serde_json::Value::String(s) if secret => {
                        *s = fingerprint(s.as_bytes());
                    }
                    _ => redact_json(val),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

/// The body bytes to show: the preview, inflated when gzip/deflate encoded (RFC 9110 §8.4).
/// Returns the bytes and whether they were decoded.
fn decoded<'a>(head: &Head, preview: &'a [u8]) -> (Cow<'a, [u8]>, bool) {
    let Some(enc) = head.header("content-encoding") else {
        return (Cow::Borrowed(preview), false);
    };
    let enc = String::from_utf8_lossy(enc).trim().to_ascii_lowercase();
    let inflate = |r: &mut dyn std::io::Read| -> Option<Vec<u8>> {
        let mut out = Vec::new();
        // A truncated preview ends mid-stream: keep what inflated before the error.
        let _ = r.take(MAX_INFLATED).read_to_end(&mut out);
        (!out.is_empty()).then_some(out)
    };
    let out = match enc.as_str() {
        "gzip" | "x-gzip" => inflate(&mut flate2::read::GzDecoder::new(preview)),
        "deflate" => inflate(&mut flate2::read::ZlibDecoder::new(preview))
            .or_else(|| inflate(&mut flate2::read::DeflateDecoder::new(preview))),
        _ => None,
    };
    match out {
        Some(o) => (Cow::Owned(o), true),
        None => (Cow::Borrowed(preview), false),
    }
}

/// `ct`: the Content-Type field's value.
fn is_json_type(ct: Option<&[u8]>) -> bool {
    ct.is_some_and(|ct| {
        ct.windows(5)
            .any(|w| w[1..].eq_ignore_ascii_case(b"json") && (w[0] == b'/' || w[0] == b'+'))
    })
}

fn is_binary_type(ct: Option<&[u8]>) -> bool {
    ct.is_some_and(|ct| {
        let starts = |p: &[u8]| ct.len() >= p.len() && ct[..p.len()].eq_ignore_ascii_case(p);
        starts(b"application/octet-stream")
            || starts(b"image/")
            || starts(b"audio/")
            || starts(b"video/")
    })
}

/// Text that reads as text: UTF-8 without control characters other than whitespace.
fn looks_like_text(b: &[u8]) -> bool {
    // The usual body is all ASCII: every byte tested without branches (vector code), then the
    // careful walk only for what has other bytes.
    let (control, high) = b.iter().fold((false, false), |(control, high), &c| {
        let bad = (c < 0x20 && c != b'\n' && c != b'\r' && c != b'\t') || c == 0x7f;
        (control | bad, high | (c >= 0x80))
    });
    if !high {
        return !control;
    }
    // ASCII first, a byte at a time: printable, or whitespace.
    let ascii = b.iter().position(|&c| !c.is_ascii()).unwrap_or(b.len());
    if !b[..ascii]
        .iter()
        .all(|&c| (0x20..0x7f).contains(&c) || matches!(c, b'\n' | b'\r' | b'\t'))
    {
        return false;
    }
    let b = &b[ascii..];
    match std::str::from_utf8(b) {
        Ok(s) => s
            .chars()
            .all(|c| !c.is_control() || c == '\n' || c == '\r' || c == '\t'),
        // A preview may end inside a multi-byte character.
        Err(e) => e.error_len().is_none() && looks_like_text(&b[..e.valid_up_to()]),
    }
}

/// The body as the log shows it: `none`, pretty JSON, text, or `<octet-stream N bytes> 0x...`,
/// followed by notes on what is missing. `text_limit` bounds text shown.
pub fn body(head: &Head, body: &Body, redact: bool, text_limit: usize) -> String {
    let mut out = Vec::new();
    write_body(&mut out, head, body, redact, text_limit);
    // Only `str`s were written: the conversion checks and keeps the bytes.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// [`body`], appended to `out`.
pub fn write_body(out: &mut Vec<u8>, head: &Head, body: &Body, redact: bool, text_limit: usize) {
    if body.len == 0 {
        out.extend_from_slice(b"none");
        return;
    }
    let (bytes, was_decoded) = decoded(head, &body.preview);
    let whole = body.preview_is_whole();
    let ct = head.header("content-type");
    if is_binary_type(ct) || !looks_like_text(&bytes) {
        let _ = write!(out, "<octet-stream {} bytes> 0x", body.len);
        for b in body.preview.iter().take(BINARY_PREVIEW) {
            let _ = write!(out, "{b:02x}");
        }
    } else {
        let json = (whole
            && (is_json_type(ct) || bytes.first().is_some_and(|b| *b == b'{' || *b == b'[')))
        .then(|| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .flatten();
        match json {
            Some(mut v) => {
                if redact {
                    redact_json(&mut v);
                }
                let _ = serde_json::to_writer_pretty(&mut *out, &v);
            }
            None => {
                let n = bytes.len().min(text_limit);
                let t = text_of(&bytes[..n]);
                let t = if redact && is_json_type(ct) {
                    Cow::Owned(redact_json_text(&t))
                } else {
                    t
                };
                // The entry's own blank lines follow: a final newline would add one.
                out.extend_from_slice(t.trim_end_matches(['\n', '\r']).as_bytes());
            }
        }
    }
    if !whole {
        let shown = body.preview.len() as u64;
        let uncopied = body.missing - body.lost;
        let _ = write!(
            out,
            "\n[{} of {} body bytes shown",
            shown.min(body.len),
            body.len
        );
        if uncopied > 0 {
            let _ = write!(out, "; {uncopied} bytes counted, not copied");
        }
        if body.lost > 0 {
            let _ = write!(out, "; {} bytes lost (ring buffer full)", body.lost);
        }
        out.push(b']');
    }
    if was_decoded {
        out.extend_from_slice(b"\n[decoded from its Content-Encoding]");
    }
}

/// `"password": "..."`-style members of each secret field, compiled once.
static SECRET_MEMBERS: std::sync::LazyLock<Vec<regex::Regex>> = std::sync::LazyLock::new(|| {
    SECRET_FIELDS
        .iter()
        .filter_map(|field| {
            regex::Regex::new(&format!(r#"(?i)("{field}"\s*:\s*")((?:[^"\\]|\\.)*)(")"#)).ok()
        })
        .collect()
});

/// JSON that does not parse (truncated) still hides `"password": "..."` values.
fn redact_json_text(t: &str) -> String {
    let mut out = t.to_owned();
    for re in SECRET_MEMBERS.iter() {
        out = re
            .replace_all(&out, |c: &regex::Captures<'_>| {
                format!("{}{}{}", &c[1], fingerprint(c[2].as_bytes()), &c[3])
            })
            .into_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::http::head::{HeadParse, parse_head};

    fn head(s: &str) -> Head {
        match parse_head(s.as_bytes()) {
            HeadParse::Complete(h) => h,
            other => panic!("{other:?}"),
        }
    }

    fn whole(b: &[u8]) -> Body {
        Body {
            len: b.len() as u64,
            preview: b.to_vec(),
            missing: 0,
            lost: 0,
        }
    }

    #[test]
    fn content_types_and_text_are_told_apart_without_case() {
        let h = |ct: &str| head(&format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\n\r\n"));
        assert!(is_json_type(h("application/json").header("content-type")));
        assert!(is_json_type(
            h("Application/JSON; charset=utf-8").header("content-type")
        ));
        assert!(is_json_type(
            h("application/vnd.openstack.image+Json").header("content-type")
        ));
        assert!(!is_json_type(
            h("text/plain; note=json").header("content-type")
        ));
        assert!(!is_json_type(h("json").header("content-type")));
        assert!(is_binary_type(
            h("Application/Octet-Stream").header("content-type")
        ));
        assert!(is_binary_type(h("IMAGE/png").header("content-type")));
        assert!(!is_binary_type(h("text/html").header("content-type")));
        assert!(!is_binary_type(h("imag").header("content-type")));
        assert!(looks_like_text(b"plain\ttext\r\n"));
        assert!(looks_like_text("caf\u{e9} \u{2603}".as_bytes()));
        // A preview cut inside a multi-byte character still reads as text.
        assert!(looks_like_text(&"caf\u{e9}".as_bytes()[..4]));
        assert!(!looks_like_text(b"nul\0byte"));
        assert!(!looks_like_text(b"del\x7f"));
        assert!(!looks_like_text("\u{e9}\u{7}".as_bytes()));
        assert!(!looks_like_text(b"\xff\xfe"));
        assert_eq!(text_of(b"ascii"), "ascii");
        assert_eq!(text_of(b"bad \xff"), "bad \u{fffd}");
    }

    #[test]
    fn json_is_pretty_with_two_spaces_and_secrets_fingerprinted() {
        let h = head("POST / HTTP/1.1\r\nContent-Type: application/json\r\n\r\n");
        let b = whole(br#"{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","password":"asdf"}}}}}"#);
        let shown = body(&h, &b, true, 1000);
        let want = format!(
            "{{\n  \"auth\": {{\n    \"identity\": {{\n      \"methods\": [\n        \"password\"\n      ],\n      \"password\": {{\n        \"user\": {{\n          \"name\": \"admin\",\n          \"password\": \"{}\"\n        }}\n      }}\n    }}\n  }}\n}}",
            fingerprint(b"asdf")
        );
        assert_eq!(shown, want);
        assert!(body(&h, &b, false, 1000).contains("\"password\": \"asdf\""));
    }

    #[test]
    fn fingerprints_are_stable_and_short() {
        assert_eq!(fingerprint(b"gAAAAABj"), fingerprint(b"gAAAAABj"));
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
        assert_eq!(fingerprint(b"abc"), "<redacted sha256:ba7816bf>");
        assert_eq!(
            header_value("X-Auth-Token", b"abc", true),
            "<redacted sha256:ba7816bf>"
        );
        assert_eq!(header_value("X-Auth-Token", b"abc", false), "abc");
        assert_eq!(header_value("Accept", b"*/*", true), "*/*");
    }

    #[test]
    fn binary_is_size_and_hex() {
        let h = head("PUT / HTTP/1.1\r\nContent-Type: application/octet-stream\r\n\r\n");
        let b = Body {
            len: 21233664,
            preview: b"QFI\xfb\x00\x00\x00\x03".to_vec(),
            missing: 21233656,
            lost: 1000,
        };
        let shown = body(&h, &b, true, 1000);
        assert!(
            shown.starts_with("<octet-stream 21233664 bytes> 0x514649fb00000003"),
            "{shown}"
        );
        assert!(
            shown.ends_with("[8 of 21233664 body bytes shown; 21232656 bytes counted, not copied; 1000 bytes lost (ring buffer full)]"),
            "{shown}"
        );
    }

    #[test]
    fn gzip_is_decoded_for_display() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(br#"{"a":1}"#).unwrap();
        let gz = enc.finish().unwrap();
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n\r\n",
        );
        let shown = body(&h, &whole(&gz), true, 1000);
        assert_eq!(
            shown,
            "{\n  \"a\": 1\n}\n[decoded from its Content-Encoding]"
        );
    }

    #[test]
    fn text_empty_and_truncated() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
        assert_eq!(body(&h, &whole(b"hello\n"), true, 1000), "hello");
        assert_eq!(body(&h, &whole(b""), true, 1000), "none");
        let b = Body {
            len: 100,
            preview: b"hello".to_vec(),
            missing: 0,
            lost: 0,
        };
        assert_eq!(
            body(&h, &b, true, 1000),
            "hello\n[5 of 100 body bytes shown]"
        );
    }

    #[test]
    fn truncated_json_still_hides_passwords() {
        let h = head("POST / HTTP/1.1\r\nContent-Type: application/json\r\n\r\n");
        let b = Body {
            len: 500,
            preview: br#"{"user": {"password": "s3cr\"et", "name": "x"#.to_vec(),
            missing: 0,
            lost: 0,
        };
        let shown = body(&h, &b, true, 1000);
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("<redacted sha256:"));
    }
}
