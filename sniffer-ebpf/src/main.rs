//! sniffer's kernel side.
//!
//! Syscall tracepoints on the socket send/recv family copy the plaintext bytes that target
//! processes move through stream sockets into one ring buffer; connect/accept/close and the
//! sched tracepoints keep the socket and process bookkeeping. Kernel struct members are read at
//! offsets userspace computed from BTF (rustc emits no CO-RE relocations), so one object runs on
//! any kernel whose BTF has the members, from 5.10 on: the programs that need newer kernel
//! features (bpf_loop, atomic fetch-and-add) come in variants userspace chooses from.
//!
//! - `maps`: every map, the configuration and the counters;
//! - `sockets`: fd -> `struct sock`, addresses, the per-socket state and its events;
//! - `syscalls`: the enter/exit programs of the socket syscalls;
//! - `copy`: the chunk loop (bpf_loop or bounded) that copies a syscall's bytes;
//! - `atomic`: the stream offsets' atomic add, with and without fetch;
//! - `mem`: copying and zeroing records a word at a time (not the byte-loop memcpy);
//! - `ring`: ring buffer wakeups, room, small records;
//! - `tls`: uprobes on OpenSSL, TLS plaintext joined to its socket;
//! - `callers`: the process behind an untraced client's TCP connect;
//! - `procs`: following forks, execs and exits;
//! - `diag`: diagnostics for `sniffer -vv` (aya-log), free when off.
#![no_std]
#![no_main]
// The stream offsets' atomics and the optimiser barrier are inline assembly (see `atomic`).
#![feature(asm_experimental_arch)]

mod atomic;
mod callers;
mod copy;
mod diag;
mod maps;
mod mem;
mod procs;
mod ring;
mod sockets;
mod syscalls;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
