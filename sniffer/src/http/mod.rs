//! HTTP/1.x on a byte stream (RFC 9112): heads, body framing, chunked coding, request targets,
//! and a parser per direction that turns stream pieces into messages; uwsgi request packets
//! read as requests.
pub mod chunked;
pub mod framing;
pub mod head;
pub mod message;
pub mod parser;
pub mod target;
pub mod uwsgi;
