//! What a user watching the terminal sees while sniffer runs: a status line on stderr kept up
//! to date ([`status`]) and, with `--follow`, one line per exchange on stdout ([`follow`]).
//! [`term`] keeps the two (and sniffer's diagnostics) from writing over each other.
pub mod follow;
pub mod status;
pub mod term;
