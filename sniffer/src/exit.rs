//! sniffer's exit codes (the README's table lists the same). A run with a command after `--`
//! otherwise exits with that command's own status, shell style (128 + N for a signal).

/// Everything asked was done.
pub const OK: u8 = 0;
/// sniffer itself failed (the kernel or the machine did something it could not handle).
pub const FAILURE: u8 = 1;
/// The user can fix it: a bad option, not root, an output refused; nothing was captured.
pub const USAGE: u8 = 2;
/// The capture ran, but an output could not be written entirely (a full disk, say): what was
/// lost is counted in the summary. sysexits.h calls 74 EX_IOERR. It wins over the command's
/// status, which the summary then names.
pub const OUTPUT_INCOMPLETE: u8 = 74;
