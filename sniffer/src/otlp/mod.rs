//! OpenTelemetry export (`--otlp URL`): every exchange as spans ([`spans`]), encoded as OTLP
//! protobuf ([`proto`]) and sent over HTTP ([`http`]) from a thread that never holds up the
//! capture ([`export`]). [`sink`] feeds it from a live run; `sniffer merge --otlp` from a
//! merged capture.
pub mod export;
pub mod http;
pub mod merged;
pub mod proto;
pub mod sink;
pub mod spans;

pub use export::{Exporter, Options, Summary};
pub use http::Endpoint;
