//! Where each TLS probe goes in a library's code.
//!
//! A uprobe is a breakpoint. Once its programs ran, the kernel carries out the instruction the
//! breakpoint replaced: a push, a nop, a relative jump or call it emulates (x86
//! arch/x86/kernel/uprobes.c; push since 4.18), any other it copies out of line and
//! single-steps, a debug trap more. Here, in a VM, a probe hit costs about 1 µs emulated and
//! 11 µs single-stepped.
//!
//! OpenSSL 3's SSL_read and SSL_write open with `sub $N,%rsp` (single-stepped) and call an
//! inner function, ssl_read_internal or ssl_write_internal, with SSL_read_ex's and
//! SSL_write_ex's arguments and result (> 0 on success, the count in the fourth argument); the
//! `_ex` forms call the same one, and it opens with pushes. So a read or write probe goes on the
//! inner function when both forms call the same function of the library and it opens with an
//! emulated instruction: one probe for both forms, with no single step. Otherwise, and always
//! for the handshake functions (once per connection), on each exported function. OpenSSL 3.3
//! added SSL_write_ex2 and a flags argument to ssl_write_internal: where a library exports
//! `<name>_ex2`, that pair keeps its exported probes.

use std::ops::Range;

use sniffer_common::programs;

use super::symbols::Functions;

/// The functions looked up in a library: those probed ([`programs::SSL_FUNCTIONS`], in order),
/// then those only looked for.
pub fn names() -> Vec<&'static str> {
    let mut n: Vec<&str> = programs::SSL_FUNCTIONS.iter().map(|f| f.0).collect();
    n.extend(PAIRS.iter().map(|p| p.ex2));
    n
}

/// A read or write function in its plain and `_ex` forms.
struct Pair {
    plain: &'static str,
    ex: &'static str,
    /// Exported by OpenSSL versions whose inner function takes other arguments.
    ex2: &'static str,
    /// The entry program of the `_ex` form, which reads the count where the inner one puts it.
    entry: &'static str,
}

const PAIRS: [Pair; 2] = [
    Pair {
        plain: "SSL_read",
        ex: "SSL_read_ex",
        ex2: "SSL_read_ex2",
        entry: "ssl_read_ex",
    },
    Pair {
        plain: "SSL_write",
        ex: "SSL_write_ex",
        ex2: "SSL_write_ex2",
        entry: "ssl_write_ex",
    },
];

/// One probe of a library: an entry and a return program at a file offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// What it catches, for the log.
    pub what: String,
    pub entry: &'static str,
    /// `None`: the read and write return program of the variant loaded.
    pub ret: Option<&'static str>,
    pub offset: u64,
    /// The kernel emulates the instruction there (no single step).
    pub emulated: bool,
}

/// endbr64: changes no register and not the stack, so past it the arguments and the return
/// address are where they were at the call.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
/// How far into a wrapper its call to the inner function is looked for.
const WINDOW: usize = 128;

/// The probes for a library whose functions `f` found (looked up by [`names`]).
pub fn plan(f: &Functions) -> Vec<Site> {
    let names = names();
    let at = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| f.at.get(i)?.clone())
    };
    let mut covered: Vec<&str> = Vec::new();
    let mut sites = Vec::new();
    for p in &PAIRS {
        let (Some(plain), Some(ex)) = (at(p.plain), at(p.ex)) else {
            continue;
        };
        if at(p.ex2).is_some() {
            continue;
        }
        let Some(inner) = shared_callee(&f.data, &plain, &ex) else {
            continue;
        };
        let (offset, emulated) = spot(&f.data, inner);
        if !emulated {
            continue;
        }
        covered.extend([p.plain, p.ex]);
        sites.push(Site {
            what: format!(
                "{} and {} (the function both call, at {inner:#x})",
                p.plain, p.ex
            ),
            entry: p.entry,
            ret: None,
            offset,
            emulated,
        });
    }
    for &(symbol, entry, ret) in programs::SSL_FUNCTIONS {
        if covered.contains(&symbol) {
            continue;
        }
        let Some((start, _)) = at(symbol) else {
            continue;
        };
        let (offset, emulated) = spot(&f.data, start);
        sites.push(Site {
            what: symbol.to_owned(),
            entry,
            ret,
            offset,
            emulated,
        });
    }
    sites
}

/// The kernel emulates the instruction `code` starts with: push r64 (also r8-r15), nop, jmp or
/// call relative.
fn emulated(code: &[u8]) -> bool {
    matches!(
        code,
        [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..] | [0x90 | 0xe8 | 0xe9 | 0xeb, ..]
    )
}

/// The probe's offset for the function at `start` (past an endbr64 when what follows is
/// emulated), and whether the instruction there is emulated.
fn spot(data: &[u8], start: u64) -> (u64, bool) {
    let code = usize::try_from(start)
        .ok()
        .and_then(|s| data.get(s..))
        .unwrap_or_default();
    match code.strip_prefix(&ENDBR64) {
        Some(rest) if emulated(rest) => (start + 4, true),
        _ => (start, emulated(code)),
    }
}

/// Where the rel32 calls and jumps in the first [`WINDOW`] bytes of the function at `f` go,
/// inside its section, in order. Every byte is tried as an opcode; [`shared_callee`] keeps
/// only what two functions share.
fn branch_targets(data: &[u8], (start, section): &(u64, Range<u64>)) -> Vec<u64> {
    let Ok(start) = usize::try_from(*start) else {
        return Vec::new();
    };
    let end = data.len().min(start.saturating_add(WINDOW));
    (start..end)
        .filter(|&i| matches!(data[i], 0xe8 | 0xe9))
        .filter_map(|i| {
            let rel = i32::from_le_bytes(data.get(i + 1..i + 5)?.try_into().ok()?);
            let target = (i as u64 + 5).checked_add_signed(i64::from(rel))?;
            section.contains(&target).then_some(target)
        })
        .collect()
}

/// The function `a` calls (or jumps to) first that `b` calls too, other than themselves.
fn shared_callee(data: &[u8], a: &(u64, Range<u64>), b: &(u64, Range<u64>)) -> Option<u64> {
    let of_b = branch_targets(data, b);
    branch_targets(data, a)
        .into_iter()
        .find(|t| of_b.contains(t) && *t != a.0 && *t != b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's libssl3 (3.0.19): the first bytes of SSL_read, SSL_read_ex, SSL_write,
    /// SSL_write_ex and of the inner functions they call, at their offsets in the file.
    const READ: u64 = 0x35430;
    const READ_EX: u64 = 0x354c0;
    const WRITE: u64 = 0x35980;
    const WRITE_EX: u64 = 0x35a10;
    const READ_INNER: u64 = 0x35290;
    const WRITE_INNER: u64 = 0x355a0;

    fn debian12() -> Vec<u8> {
        let mut d = vec![0u8; 0x36000];
        let mut put = |at: u64, bytes: &[u8]| {
            d[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        // sub $0x18,%rsp; mov %fs:0x28,%rax; mov %rax,0x8(%rsp); xor %eax,%eax;
        // test %edx,%edx; js; mov %rsp,%rcx; movslq %edx,%rdx; then call rel32
        const PLAIN: [u8; 31] = [
            0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, 0x48,
            0x89, 0x44, 0x24, 0x08, 0x31, 0xc0, 0x85, 0xd2, 0x78, 0x2f, 0x48, 0x89, 0xe1, 0x48,
            0x63, 0xd2, 0xe8,
        ];
        // sub $0x8,%rsp; then call rel32
        const EX: [u8; 5] = [0x48, 0x83, 0xec, 0x08, 0xe8];
        for (at, head, rel) in [
            (READ, &PLAIN[..], [0x3d, 0xfe, 0xff, 0xff]),
            (READ_EX, &EX[..], [0xc7, 0xfd, 0xff, 0xff]),
            (WRITE, &PLAIN[..], [0xfd, 0xfb, 0xff, 0xff]),
            (WRITE_EX, &EX[..], [0x87, 0xfb, 0xff, 0xff]),
        ] {
            put(at, head);
            put(at + head.len() as u64, &rel);
        }
        // push %r13; push %r12; push %rbp; push %rbx
        put(READ_INNER, &[0x41, 0x55, 0x41, 0x54, 0x55, 0x53]);
        // push %r14; ...
        put(WRITE_INNER, &[0x41, 0x56, 0x41, 0x55]);
        d
    }

    fn functions(data: Vec<u8>, found: &[(&str, u64)]) -> Functions {
        let text = 0x20000..0x36000;
        let at = names()
            .iter()
            .map(|n| {
                found
                    .iter()
                    .find(|f| f.0 == *n)
                    .map(|f| (f.1, text.clone()))
            })
            .collect();
        Functions { data, at }
    }

    fn offsets(sites: &[Site]) -> Vec<(&str, u64, bool)> {
        sites
            .iter()
            .map(|s| (s.entry, s.offset, s.emulated))
            .collect()
    }

    const ALL: [(&str, u64); 4] = [
        ("SSL_read", READ),
        ("SSL_read_ex", READ_EX),
        ("SSL_write", WRITE),
        ("SSL_write_ex", WRITE_EX),
    ];

    #[test]
    fn openssl_3_0_reads_and_writes_are_probed_on_their_inner_functions() {
        let f = functions(debian12(), &ALL);
        let sites = plan(&f);
        assert_eq!(
            offsets(&sites),
            [
                ("ssl_read_ex", READ_INNER, true),
                ("ssl_write_ex", WRITE_INNER, true)
            ]
        );
        assert_eq!(
            sites[0].what,
            "SSL_read and SSL_read_ex (the function both call, at 0x35290)"
        );
        assert_eq!(sites[0].ret, None);
    }

    #[test]
    fn an_endbr64_is_stepped_over_when_a_push_follows() {
        let mut d = debian12();
        // Built with -fcf-protection: endbr64, then the pushes.
        let inner = 0x30000;
        d[inner..inner + 6].copy_from_slice(&[0xf3, 0x0f, 0x1e, 0xfa, 0x41, 0x55]);
        // SSL_read_ex: endbr64; push %rbx; call inner
        let ex = 0x31000;
        let rel = (inner as i64 - (ex as i64 + 5 + 5)) as i32;
        d[ex..ex + 5].copy_from_slice(&[0xf3, 0x0f, 0x1e, 0xfa, 0x53]);
        d[ex + 5] = 0xe8;
        d[ex + 6..ex + 10].copy_from_slice(&rel.to_le_bytes());
        // SSL_read: sub $0x18,%rsp; call inner
        let plain = 0x32000;
        let rel = (inner as i64 - (plain as i64 + 4 + 5)) as i32;
        d[plain..plain + 4].copy_from_slice(&[0x48, 0x83, 0xec, 0x18]);
        d[plain + 4] = 0xe8;
        d[plain + 5..plain + 9].copy_from_slice(&rel.to_le_bytes());
        let f = functions(d, &[("SSL_read", plain as u64), ("SSL_read_ex", ex as u64)]);
        assert_eq!(
            offsets(&plan(&f)),
            [("ssl_read_ex", inner as u64 + 4, true)]
        );
        // Without a shared callee, each on its own: SSL_read_ex past its endbr64 (a push
        // follows), SSL_read at its start (a sub follows nothing skipped).
        let mut f = f;
        f.data[ex + 5] = 0x90;
        f.data[inner..inner + 6].fill(0);
        assert_eq!(
            offsets(&plan(&f)),
            [
                ("ssl_read", plain as u64, false),
                ("ssl_read_ex", ex as u64 + 4, true)
            ]
        );
    }

    #[test]
    fn an_inner_function_that_is_single_stepped_too_is_not_used() {
        let mut d = debian12();
        // ssl_write_internal opening with sub $0x28,%rsp.
        d[WRITE_INNER as usize..WRITE_INNER as usize + 4]
            .copy_from_slice(&[0x48, 0x83, 0xec, 0x28]);
        let sites = plan(&functions(d, &ALL));
        assert_eq!(
            offsets(&sites),
            [
                ("ssl_read_ex", READ_INNER, true),
                ("ssl_write", WRITE, false),
                ("ssl_write_ex", WRITE_EX, false)
            ]
        );
        assert_eq!(sites[1].what, "SSL_write");
    }

    #[test]
    fn openssl_3_3_writes_keep_their_exported_probes() {
        // SSL_write_ex2 exported: ssl_write_internal takes flags before the count's pointer.
        let mut found = ALL.to_vec();
        found.push(("SSL_write_ex2", 0x35b00));
        let sites = plan(&functions(debian12(), &found));
        assert_eq!(
            offsets(&sites),
            [
                ("ssl_read_ex", READ_INNER, true),
                ("ssl_write", WRITE, false),
                ("ssl_write_ex", WRITE_EX, false)
            ]
        );
    }

    #[test]
    fn calls_out_of_the_section_or_to_different_functions_are_not_shared() {
        let mut d = debian12();
        // SSL_read_ex calls elsewhere (rel32 + 0x100): no function both call.
        d[READ_EX as usize + 5] = 0xc7 + 0x10;
        let sites = plan(&functions(d.clone(), &ALL[..2]));
        assert_eq!(
            offsets(&sites),
            [("ssl_read", READ, false), ("ssl_read_ex", READ_EX, false)]
        );
        // Both call the same place, but out of their section (a PLT stub, another library).
        let f = Functions {
            data: debian12(),
            at: names()
                .iter()
                .map(|n| {
                    ALL.iter()
                        .find(|f| f.0 == *n)
                        .map(|f| (f.1, 0x35300..0x36000))
                })
                .collect(),
        };
        assert_eq!(
            offsets(&plan(&f)),
            [
                ("ssl_write_ex", WRITE_INNER, true),
                ("ssl_read", READ, false),
                ("ssl_read_ex", READ_EX, false)
            ]
        );
    }

    #[test]
    fn a_lone_form_or_a_truncated_file_is_probed_where_it_is() {
        // OpenSSL 1.1.0 has no _ex forms.
        let sites = plan(&functions(
            debian12(),
            &[("SSL_read", READ), ("SSL_write", WRITE)],
        ));
        assert_eq!(
            offsets(&sites),
            [("ssl_write", WRITE, false), ("ssl_read", READ, false)]
        );
        // Offsets past the end of the bytes: probed there, never read out of bounds.
        let f = functions(vec![0xe8; 16], &[("SSL_read", 8), ("SSL_read_ex", 1 << 40)]);
        assert_eq!(
            offsets(&plan(&f)),
            [("ssl_read", 8, true), ("ssl_read_ex", 1 << 40, false)]
        );
    }

    /// The system's OpenSSL, where installed (Debian 12's 3.0 here): its reads and writes are
    /// probed where the kernel emulates the instruction, inside the file.
    #[test]
    fn the_systems_openssl_reads_and_writes_are_not_single_stepped() {
        let lib = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !lib.exists() {
            eprintln!("no {}: skipped", lib.display());
            return;
        }
        let f = super::super::symbols::functions(lib, &names()).unwrap();
        let size = f.data.len() as u64;
        let sites = plan(&f);
        for what in ["SSL_read and SSL_read_ex", "SSL_write and SSL_write_ex"] {
            let s = sites
                .iter()
                .find(|s| s.what.starts_with(what))
                .unwrap_or_else(|| panic!("{what}: {sites:#?}"));
            assert!(s.emulated && s.offset < size, "{s:?}");
        }
    }

    #[test]
    fn emulated_instructions() {
        for code in [
            &[0x55][..],
            &[0x41, 0x57],
            &[0x90],
            &[0xe8, 0, 0, 0, 0],
            &[0xeb, 0],
        ] {
            assert!(emulated(code), "{code:x?}");
        }
        for code in [
            &[][..],
            &[0x48, 0x83, 0xec, 0x18],
            &[0x41],
            &[0x49, 0x55],
            &[0xf3, 0x0f, 0x1e, 0xfa],
            &[0xc3],
        ] {
            assert!(!emulated(code), "{code:x?}");
        }
    }
}
