//! `sniffer report`: one self-contained HTML page of a capture. The sequence diagram is drawn
//! as SVG by the page's own script (`page.js`, inline) from the model this module computes:
//! participants in order of first appearance, one arrow per message with the log's number,
//! responses paired with their requests, the token-issue blocks the mermaid output wraps in
//! `opt`, and for each message its headers and body as the log shows them (so redaction is the
//! log's), sizes, times and marks. Nothing is loaded from the network: the page opens from
//! disk and works offline.
//!
//! The script draws only the rows in view (and a margin), so 10,000 messages scroll as
//! smoothly as 10.
use serde::Serialize;

use crate::diagram::{
    mermaid::{responses, token_blocks},
    model::{Msg, Paths},
    placeholders::Placeholders,
};

const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

/// How the page is made.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub placeholders: bool,
    pub paths: Paths,
    /// The input's file name, for the title.
    pub source: String,
}

/// One arrow and what a click on it shows.
#[derive(Debug, Serialize, PartialEq)]
pub struct Arrow {
    /// The log's number.
    pub n: u64,
    pub req: bool,
    /// Indexes into `participants`: the arrow goes from `src` to `dst` (a response goes from
    /// the server to the client).
    pub src: usize,
    pub dst: usize,
    /// The text on the arrow, as the mermaid diagram writes it.
    pub label: String,
    pub method: String,
    /// Final status of the exchange (responses and their requests), 0 when unknown.
    pub status: u16,
    /// The URL as the client sent it.
    pub url: String,
    /// What the service received through a proxy, and the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Index of the other message of its exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair: Option<usize>,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub marks: Vec<String>,
    /// Kernel time of the first byte, ms after the first message's (JSONL input only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t_ms: Option<f64>,
    /// First to last byte, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_ms: Option<f64>,
    /// First byte, ms since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Body bytes counted but not copied / lost to a full ring.
    #[serde(skip_serializing_if = "is_zero")]
    pub missing: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub lost: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A token-issue block: arrows `first..=last`, boxed and labelled like mermaid's `opt`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Block {
    pub first: usize,
    pub last: usize,
    pub label: String,
}

/// What the page's script draws.
#[derive(Debug, Serialize, PartialEq)]
pub struct Model {
    pub source: String,
    pub participants: Vec<String>,
    pub arrows: Vec<Arrow>,
    pub blocks: Vec<Block>,
    /// (name, value) of `--placeholders`.
    pub placeholders: Vec<(String, String)>,
    /// Whether times and sizes are known (the input was the JSONL).
    pub timed: bool,
}

/// The body size the log states: `[65536 of N body bytes shown...]` or `<octet-stream N
/// bytes>`; None when it does not say.
fn size_from_log(m: &Msg) -> Option<u64> {
    if let Some(rest) = m.body.lines().last().and_then(|l| l.strip_prefix('['))
        && let Some((_, n)) = rest.split_once(" of ")
        && let Some((n, _)) = n.split_once(" body bytes shown")
    {
        return n.parse().ok();
    }
    if let Some(rest) = m.body.strip_prefix("<octet-stream ")
        && let Some((n, _)) = rest.split_once(" bytes>")
    {
        return n.parse().ok();
    }
    None
}

/// The model of `msgs`.
pub fn model(msgs: &[Msg], opts: &Options) -> Model {
    let mut participants: Vec<String> = Vec::new();
    let index = |name: &str, ps: &mut Vec<String>| match ps.iter().position(|p| p == name) {
        Some(i) => i,
        None => {
            ps.push(name.to_owned());
            ps.len() - 1
        }
    };
    let pairs = responses(msgs);
    let mut pair_of: Vec<Option<usize>> = vec![None; msgs.len()];
    for (&q, &r) in &pairs {
        pair_of[q] = Some(r);
        pair_of[r] = Some(q);
    }
    let t0 = msgs
        .iter()
        .filter_map(|m| m.meta.as_ref().map(|x| x.first_ns))
        .filter(|&t| t > 0)
        .min();
    let mut ph = Placeholders::new();
    let mut arrows = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let client = index(&m.from, &mut participants);
        let server = index(&m.to, &mut participants);
        let path = m.shown_path(opts.paths);
        let path = if opts.placeholders {
            ph.apply(&path)
        } else {
            path
        };
        let label = if m.request {
            format!("{} {path}", m.method)
        } else {
            let status = m.status.map_or("?".to_owned(), |s| s.to_string());
            format!("{status} {} {path}", m.reason)
        };
        let status = m
            .status
            .or_else(|| pair_of[i].and_then(|r| msgs[r].status))
            .unwrap_or(0);
        let meta = m.meta.as_ref().filter(|x| x.first_ns > 0);
        let ms = |ns: u64| ns as f64 / 1e6;
        arrows.push(Arrow {
            n: m.number,
            req: m.request,
            src: if m.request { client } else { server },
            dst: if m.request { server } else { client },
            label,
            method: m.method.clone(),
            status,
            url: m.url.clone(),
            served: m.served.clone(),
            via: m.via.clone(),
            pair: pair_of[i],
            headers: m.headers.clone(),
            body: m.body.clone(),
            marks: m.marks.clone(),
            t_ms: meta
                .zip(t0)
                .map(|(x, t0)| ms(x.first_ns.saturating_sub(t0))),
            span_ms: meta.map(|x| ms(x.last_ns.saturating_sub(x.first_ns))),
            unix_ms: meta.map(|x| x.unix_ns as f64 / 1e6).filter(|&u| u > 0.0),
            size: meta.map(|x| x.body_size).or_else(|| size_from_log(m)),
            missing: meta.map_or(0, |x| x.body_missing),
            lost: meta.map_or(0, |x| x.body_lost),
            truncated: meta.is_some_and(|x| x.truncated),
        });
    }
    let blocks = token_blocks(msgs)
        .into_iter()
        .map(|(first, last)| Block {
            first,
            last,
            label: format!("opt {} token issue", msgs[first].from),
        })
        .collect();
    Model {
        source: opts.source.clone(),
        participants,
        arrows,
        blocks,
        placeholders: ph.table,
        timed: t0.is_some(),
    }
}

/// HTML-escapes text for element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// JSON to sit inside `<script type="application/json">`: `</` could end the element and
/// `<!--` change how it is parsed; `\/` and `\u003c` mean the same to JSON.parse.
fn script_json(model: &Model) -> String {
    serde_json::to_string(model)
        .unwrap_or_else(|_| "{}".into())
        .replace("</", "<\\/")
        .replace("<!--", "\\u003c!--")
}

/// The whole page.
pub fn page(msgs: &[Msg], opts: &Options) -> String {
    let model = model(msgs, opts);
    let title = if opts.source.is_empty() {
        "sniffer report".to_owned()
    } else {
        format!("{} - sniffer report", opts.source)
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n\
         <title>{}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n\
         <script type=\"application/json\" id=\"model\">{}</script>\n\
         <noscript>This page draws its diagram with JavaScript; the same messages are in the \
         log it was made from.</noscript>\n<script>\n{JS}</script>\n</body>\n</html>\n",
        escape_html(&title),
        script_json(&model),
    )
}

#[cfg(test)]
mod tests;
