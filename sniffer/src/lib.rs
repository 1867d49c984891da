//! sniffer: HTTP calls behind a command, seen from the socket syscalls with eBPF.
//!
//! The pipeline runs one way, a module per step (see ARCHITECTURE.md):
//! [`probe`] (load, attach, targets) -> [`events`] (ring buffer -> typed events) ->
//! [`procs`] (who the processes are) and [`conns`] (connections) -> [`stream`] (ordered
//! bytes with exact gaps) -> [`sinks`]. [`pipeline`] wires the steps, [`app`] runs them.
pub mod app;
pub mod cgroups;
pub mod check;
pub mod classify;
pub mod cli;
pub mod conns;
pub mod demo;
pub mod diagram;
pub mod events;
pub mod exchange;
pub mod exit;
pub mod filter;
pub mod har;
pub mod heap;
pub mod http;
pub mod live;
pub mod merge;
pub mod names;
pub mod otlp;
pub mod owners;
pub mod pipeline;
pub mod probe;
pub mod procs;
pub mod proxy;
pub mod record;
pub mod render;
pub mod report;
pub mod sinks;
pub mod sockdiag;
pub mod stitch;
pub mod stream;
pub mod tls;
pub mod tools;
