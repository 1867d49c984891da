//! `sniffer diagram`: the numbered log (or the JSONL) -> a mermaid sequence diagram and a page
//! of bodies, in the shapes of shared/reference/*/diagram.md and body.md.
pub mod body;
pub mod mermaid;
pub mod model;
pub mod placeholders;
