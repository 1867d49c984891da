//! What the stitcher makes: exchanges with one or both ends' views, the entries it writes, the
//! sinks they go to.

use crate::{
    events::{Endpoint, Transport},
    exchange::MsgKey,
    http::{
        head::Head,
        message::{Ending, Message},
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Which {
    Request,
    Response,
}

/// One end's view of an exchange.
#[derive(Clone, Debug)]
pub struct View {
    pub pid: u32,
    pub conn: u64,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub transport: Transport,
    /// The socket's network namespace (0: unknown).
    pub netns: u32,
}

#[derive(Debug, Default)]
pub struct Exchange {
    pub id: u64,
    pub client: Option<View>,
    pub server: Option<View>,
    pub request: Option<Message>,
    pub response: Option<Message>,
    /// 1xx responses before the final one (from one end's view).
    pub interim: Vec<Message>,
    pub(super) interim_conn: Option<u64>,
    /// Kernel time of the request's and the response's first bytes.
    pub request_ts: u64,
    pub response_ts: Option<u64>,
    /// Why this exchange could not be read whole.
    pub broken: Option<&'static str>,
    /// A response whose request was not seen.
    pub orphan: bool,
    /// The connection ended with no response.
    pub unanswered: bool,
    pub from: String,
    pub to: String,
    pub url: String,
    /// Over TLS (read in the TLS library): the URL's scheme is https.
    pub tls: bool,
    pub numbers: [Option<u64>; 2],
    pub filtered: bool,
    /// The reverse proxy this exchange went through, when its upstream hop is folded into it
    /// or the callee was named through it.
    pub via: Option<String>,
    /// The service's end of the folded upstream hop, and the target it was sent (what the
    /// service saw: `/v2/images` for the client's `/image/v2/images`).
    pub upstream_view: Option<View>,
    pub upstream_target: Option<String>,
    /// A proxy's upstream hop folded into the client's exchange `folded_into`: not shown.
    pub folded_into: Option<u64>,
    /// The proxy's upstream hop folded into this exchange.
    pub(super) upstream: Option<u64>,
    /// For a proxy's upstream hop seen only by the service: the client the proxy forwarded.
    pub(super) caller: Option<String>,
    /// Waits in the stitcher's inbound or outbound list for its other hop.
    pub(super) listed: bool,
    pub(super) written: [bool; 2],
    pub(super) head: Option<std::sync::Arc<Head>>,
    pub(super) keys: super::few::Few<MsgKey, 2>,
    pub(super) resolved: bool,
    pub(super) done_at: Option<u64>,
    /// The connections whose view of the final response came.
    pub(super) answered_by: super::few::Few<u64, 2>,
    /// The connection whose view said the response went missing (`HttpEvent::Unanswered`).
    pub(super) answer_lost_on: Option<u64>,
}

impl Exchange {
    pub fn method(&self) -> &str {
        self.head.as_deref().and_then(Head::method).unwrap_or("")
    }

    pub fn message(&self, which: Which) -> Option<&Message> {
        match which {
            Which::Request => self.request.as_ref(),
            Which::Response => self.response.as_ref(),
        }
    }

    /// The exchange or one of its messages broke.
    pub fn is_broken(&self) -> bool {
        let broken = |m: &Option<Message>| {
            m.as_ref()
                .is_some_and(|m| matches!(m.ending, Ending::Broken(_)))
        };
        self.broken.is_some() || broken(&self.request) || broken(&self.response)
    }

    /// A message of this exchange that did not end complete, or the exchange is broken.
    pub fn is_incomplete(&self) -> bool {
        let bad = |m: &Option<Message>| m.as_ref().is_some_and(|m| m.ending != Ending::Complete);
        bad(&self.request) || bad(&self.response) || self.unanswered || self.broken.is_some()
    }
}

/// A message ready to be written, with its number.
pub struct Entry<'a> {
    pub number: u64,
    pub which: Which,
    pub exchange: &'a Exchange,
    pub msg: &'a Message,
}

/// Where numbered messages go.
pub trait LogSink {
    fn message(&mut self, e: &Entry<'_>);
    /// Every message of the exchange was written (or it ended without one).
    fn exchange(&mut self, _x: &Exchange) {}
    /// Periodically: push what was written so far out (the log streams).
    fn flush(&mut self) {}
    fn close(&mut self) {}
}

/// Totals for the end-of-run summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub exchanges: u64,
    pub messages: u64,
    pub body_bytes: u64,
    pub broken: u64,
    pub filtered: u64,
    /// Messages written before their time because too many waited ([`super::MAX_QUEUED_BYTES`]).
    pub forced: u64,
    /// Messages placed before the last one written: their events came later than the order's
    /// slack ([`super::order::Slack`]), so they are written after messages that began later.
    pub out_of_order: u64,
    /// The furthest a message's first byte came behind the latest one placed before it.
    pub reorder_ns: u64,
    /// The longest slack the order released with.
    pub slack_ns: u64,
    /// Proxies' upstream hops folded into their client's exchange.
    pub folded: u64,
    /// Requests written without an answer because it was in bytes sniffer did not get (not
    /// copied or lost), with no other view to bring it.
    pub answers_missing: u64,
}

/// Of two views of one message, the one that shows more.
pub(super) fn better(a: Option<Message>, b: Option<Message>) -> Option<Message> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let rank = |m: &Message| {
                (
                    m.ending == Ending::Complete,
                    std::cmp::Reverse(m.body.missing),
                    m.body.preview.len(),
                )
            };
            Some(if rank(&b) > rank(&a) { b } else { a })
        }
        (a, b) => a.or(b),
    }
}
