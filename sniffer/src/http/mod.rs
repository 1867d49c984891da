//! HTTP/1.x on a byte stream (RFC 9112): heads, body framing, chunked coding, and a parser per
//! direction that turns stream pieces into messages; uwsgi request packets read as requests.
pub mod chunked;
pub mod head;
pub mod parser;
pub mod uwsgi;
