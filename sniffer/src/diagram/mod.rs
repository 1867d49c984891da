//! `sniffer diagram`: the numbered log (or the JSONL) -> a mermaid sequence diagram and a page
//! of bodies, in the shapes of the hand-made reference pages (diagram.md and body.md) of an
//! instrumented devstack; three of its logs with their diagrams are in `fixtures/reference/`.
pub mod body;
pub mod mermaid;
pub mod model;
pub mod placeholders;
