//! What this kernel's BPF can do, found by asking it (loading tiny programs and maps), not by
//! its version string: distribution kernels backport features, and configs differ.
//!
//! The answers choose the variant of the data programs (`sniffer_common::Variant`) and feed
//! `sniffer check`.
use std::io;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};
use sniffer_common::Variant;

/// The BPF features sniffer's programs use beyond the base of kernel 5.8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// BPF_MAP_TYPE_RINGBUF (5.8): every event goes through one.
    pub ring_buf: bool,
    /// Tracepoint programs at all (always there with CONFIG_BPF_EVENTS).
    pub tracepoint: bool,
    /// The bpf_loop helper (5.17): long copies per syscall.
    pub bpf_loop: bool,
    /// Atomic fetch-and-add (5.12): exact stream offsets under threads.
    pub atomic_fetch: bool,
}

impl Features {
    /// Probes the running kernel. Needs the rights to load BPF programs (root).
    pub fn probe() -> Self {
        let tracepoint = is_program_supported(ProgramType::TracePoint).unwrap_or(false);
        Self {
            ring_buf: is_map_supported(MapType::RingBuf).unwrap_or(false),
            tracepoint,
            bpf_loop: tracepoint
                && is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_loop)
                    .unwrap_or(false),
            atomic_fetch: atomic_fetch_supported().unwrap_or(false),
        }
    }

    /// The data programs' variant that loads here.
    pub fn variant(&self) -> Variant {
        match (self.bpf_loop, self.atomic_fetch) {
            (true, true) => Variant::Full,
            (_, true) => Variant::NoLoop,
            (_, false) => Variant::NoAtomic,
        }
    }
}

/// A socket filter doing `atomic_fetch_add` on its stack: loads from 5.12 on. Older verifiers
/// refuse the instruction's non-zero immediate ("BPF_STX uses reserved fields").
fn atomic_fetch_supported() -> io::Result<bool> {
    // struct bpf_insn: code, dst:4 | src:4, off, imm.
    const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        (code as u64)
            | ((dst as u64 & 0xf) << 8)
            | ((src as u64 & 0xf) << 12)
            | ((off as u16 as u64) << 16)
            | ((imm as u32 as u64) << 32)
    }
    const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const STX_MEM_DW: u8 = 0x7b; // BPF_STX | BPF_MEM | BPF_DW
    const STX_ATOMIC_DW: u8 = 0xdb; // BPF_STX | BPF_ATOMIC | BPF_DW
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    const ADD_FETCH: i32 = 0x01; // BPF_ADD | BPF_FETCH
    let insns = [
        insn(MOV64_IMM, 1, 0, 0, 0),
        insn(STX_MEM_DW, 10, 1, -8, 0),
        insn(MOV64_IMM, 1, 0, 0, 1),
        insn(STX_ATOMIC_DW, 10, 1, -8, ADD_FETCH),
        insn(MOV64_IMM, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ];
    prog_loads(1 /* BPF_PROG_TYPE_SOCKET_FILTER */, &insns)
}

/// Whether the kernel accepts a program of `prog_type` made of `insns`: `Ok(false)` when the
/// verifier refuses it (EINVAL, EACCES), an error when the syscall fails otherwise (EPERM).
fn prog_loads(prog_type: u32, insns: &[u64]) -> io::Result<bool> {
    // The head of union bpf_attr for BPF_PROG_LOAD (uapi/linux/bpf.h).
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    let license = c"GPL";
    let attr = ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix whose pointers point at live memory.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            std::ptr::from_ref(&attr),
            size_of::<ProgLoad>() as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: the fd was just returned to us and is not used elsewhere.
        unsafe { libc::close(fd as i32) };
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_follows_the_features() {
        let f = |bpf_loop, atomic_fetch| Features {
            ring_buf: true,
            tracepoint: true,
            bpf_loop,
            atomic_fetch,
        };
        assert_eq!(f(true, true).variant(), Variant::Full);
        assert_eq!(f(false, true).variant(), Variant::NoLoop);
        assert_eq!(f(false, false).variant(), Variant::NoAtomic);
        // bpf_loop without the atomics does not happen in a real kernel; the atomics decide.
        assert_eq!(f(true, false).variant(), Variant::NoAtomic);
    }
}
