//! Offsets of the kernel struct members the BPF programs read, from this kernel's BTF.
//!
//! rustc emits no CO-RE relocations for BPF, so instead of compiled-in layouts the programs get
//! these offsets in the config map. A member missing from BTF is an error when capture cannot
//! work without it, and turns a feature off otherwise (IPv6 addresses, unix socket paths).
use std::path::Path;

use sniffer_common::{KernelOffsets, OFFSET_ABSENT};

use super::btf::{Btf, BtfError};

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error(
        "cannot read kernel BTF at {path}: {source} (a kernel built with CONFIG_DEBUG_INFO_BTF is needed)"
    )]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel BTF at {path}: {source}")]
    Parse { path: String, source: BtfError },
    #[error("kernel BTF has no {0}")]
    Missing(String),
    #[error("kernel BTF: {0} is a bitfield, which sniffer cannot read")]
    Bitfield(String),
    #[error("kernel BTF: {what}: {source}")]
    Btf { what: String, source: BtfError },
}

/// Looks up member offsets in a BTF blob.
pub struct Layouts {
    btf: Btf,
}

impl Layouts {
    pub fn open(path: &Path) -> Result<Self, OffsetError> {
        let data = std::fs::read(path).map_err(|source| OffsetError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(data)
            .map(|btf| Self { btf })
            .map_err(|source| OffsetError::Parse {
                path: path.display().to_string(),
                source,
            })
    }

    fn err(what: &str) -> impl FnOnce(BtfError) -> OffsetError + '_ {
        move |source| OffsetError::Btf {
            what: what.to_owned(),
            source,
        }
    }

    /// Whether BTF has a type named `name` (a BTF tracepoint's `btf_trace_*` typedef, say).
    pub fn has_type(&self, name: &str) -> bool {
        self.btf.ids_by_name(name).next().is_some()
    }

    /// (bit offset, type id) of member `name` in struct `s`, looking through anonymous members.
    fn find(&self, s: u32, name: &str, what: &str) -> Result<Option<(u32, u32)>, OffsetError> {
        for m in self.btf.members(s).map_err(Self::err(what))? {
            if m.name == name {
                if m.bitfield_size != 0 {
                    return Err(OffsetError::Bitfield(what.to_owned()));
                }
                return Ok(Some((m.bit_offset, m.type_id)));
            }
            if m.name.is_empty()
                && let Some(inner) = self.btf.struct_behind(m.type_id).map_err(Self::err(what))?
                && let Some((off, id)) = self.find(inner, name, what)?
            {
                return Ok(Some((m.bit_offset + off, id)));
            }
        }
        Ok(None)
    }

    /// Byte offset of `path` (members, nested through embedded structs) in `struct strukt`.
    pub fn offset(&self, strukt: &str, path: &[&str]) -> Result<u32, OffsetError> {
        let what = format!("{strukt}.{}", path.join("."));
        let mut s = self
            .btf
            .struct_named(strukt)
            .ok_or_else(|| OffsetError::Missing(format!("struct {strukt}")))?;
        let mut bits = 0;
        for (i, name) in path.iter().enumerate() {
            let (off, type_id) = self
                .find(s, name, &what)?
                .ok_or_else(|| OffsetError::Missing(what.clone()))?;
            bits += off;
            if i + 1 < path.len() {
                s = self
                    .btf
                    .struct_behind(type_id)
                    .map_err(Self::err(&what))?
                    .ok_or_else(|| OffsetError::Missing(what.clone()))?;
            }
        }
        if bits % 8 != 0 {
            return Err(OffsetError::Bitfield(what));
        }
        Ok(bits / 8)
    }

    /// Like [`Self::offset`], [`OFFSET_ABSENT`] when the kernel lacks the member.
    fn optional(&self, strukt: &str, path: &[&str]) -> Result<u32, OffsetError> {
        match self.offset(strukt, path) {
            Err(OffsetError::Missing(what)) => {
                tracing::debug!("kernel BTF has no {what}; the feature that needs it is off");
                Ok(OFFSET_ABSENT)
            }
            other => other,
        }
    }

    /// Every offset the BPF programs use.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, OffsetError> {
        let sk = |m: &str| self.offset("sock", &["__sk_common", m]);
        let sk_opt = |m: &str| self.optional("sock", &["__sk_common", m]);
        Ok(KernelOffsets {
            task_files: self.offset("task_struct", &["files"])?,
            task_tgid: self.offset("task_struct", &["tgid"])?,
            task_pid: self.offset("task_struct", &["pid"])?,
            task_exit_code: self.optional("task_struct", &["exit_code"])?,
            files_fdt: self.offset("files_struct", &["fdt"])?,
            fdt_max_fds: self.offset("fdtable", &["max_fds"])?,
            fdt_fd: self.offset("fdtable", &["fd"])?,
            file_inode: self.offset("file", &["f_inode"])?,
            file_private_data: self.offset("file", &["private_data"])?,
            inode_mode: self.offset("inode", &["i_mode"])?,
            inode_ino: self.offset("inode", &["i_ino"])?,
            socket_type: self.offset("socket", &["type"])?,
            socket_sk: self.offset("socket", &["sk"])?,
            skc_family: sk("skc_family")?,
            skc_daddr: sk("skc_daddr")?,
            skc_rcv_saddr: sk("skc_rcv_saddr")?,
            skc_dport: sk("skc_dport")?,
            skc_num: sk("skc_num")?,
            skc_v6_daddr: sk_opt("skc_v6_daddr")?,
            skc_v6_rcv_saddr: sk_opt("skc_v6_rcv_saddr")?,
            unix_addr: self.optional("unix_sock", &["addr"])?,
            unix_peer: self.optional("unix_sock", &["peer"])?,
            unix_address_len: self.optional("unix_address", &["len"])?,
            unix_address_name: self.optional("unix_address", &["name"])?,
            sk_peer_pid: self.optional("sock", &["sk_peer_pid"])?,
            pid_numbers: self.optional("pid", &["numbers"])?,
            upid_nr: self.optional("upid", &["nr"])?,
            skc_net: self.optional("sock", &["__sk_common", "skc_net", "net"])?,
            net_ns_inum: self.optional("net", &["ns", "inum"])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte offset of `path` in `strukt` by btf-rs, an independent reader that decodes every
    /// type (through anonymous members and typedefs as [`Layouts::offset`] does).
    fn by_btf_rs(btf: &btf_rs::Btf, strukt: &str, path: &[&str]) -> Option<u32> {
        use btf_rs::Type;
        fn behind(btf: &btf_rs::Btf, mut t: Type) -> Option<btf_rs::Struct> {
            loop {
                match t {
                    Type::Struct(s) | Type::Union(s) => return Some(s),
                    Type::Typedef(_) | Type::Volatile(_) | Type::Const(_) | Type::Restrict(_) => {
                        t = btf.resolve_chained_type(t.as_btf_type()?).ok()?;
                    }
                    _ => return None,
                }
            }
        }
        fn find(btf: &btf_rs::Btf, s: &btf_rs::Struct, name: &str) -> Option<(u32, Type)> {
            for m in &s.members {
                let t = btf.resolve_chained_type(m).ok()?;
                let n = btf.resolve_name(m).ok()?;
                if n == name {
                    return Some((m.bit_offset(), t));
                }
                if n.is_empty()
                    && let Some(inner) = behind(btf, t)
                    && let Some((off, t)) = find(btf, &inner, name)
                {
                    return Some((m.bit_offset() + off, t));
                }
            }
            None
        }
        let mut s = btf
            .resolve_types_by_name(strukt)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) | Type::Union(s) => Some(s),
                _ => None,
            })?;
        let mut bits = 0;
        for (i, name) in path.iter().enumerate() {
            let (off, t) = find(btf, &s, name)?;
            bits += off;
            if i + 1 < path.len() {
                s = behind(btf, t)?;
            }
        }
        Some(bits / 8)
    }

    #[test]
    fn offsets_agree_with_an_independent_btf_reader_on_this_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("no {VMLINUX_BTF}: skipped");
            return;
        }
        let ours = Layouts::open(path).unwrap();
        let theirs = btf_rs::Btf::from_file(path).unwrap();
        let paths: &[(&str, &[&str])] = &[
            ("task_struct", &["files"]),
            ("task_struct", &["tgid"]),
            ("task_struct", &["exit_code"]),
            ("files_struct", &["fdt"]),
            ("fdtable", &["fd"]),
            ("file", &["f_inode"]),
            ("file", &["private_data"]),
            ("inode", &["i_mode"]),
            ("inode", &["i_ino"]),
            ("socket", &["sk"]),
            ("sock", &["__sk_common", "skc_dport"]),
            ("sock", &["__sk_common", "skc_num"]),
            ("sock", &["__sk_common", "skc_v6_daddr"]),
            ("sock", &["__sk_common", "skc_net", "net"]),
            ("sock", &["sk_peer_pid"]),
            ("unix_sock", &["peer"]),
            ("unix_address", &["name"]),
            ("net", &["ns", "inum"]),
            ("pid", &["numbers"]),
        ];
        for (strukt, p) in paths {
            let want = by_btf_rs(&theirs, strukt, p);
            assert!(want.is_some(), "{strukt}.{p:?} not in this kernel's BTF");
            assert_eq!(ours.offset(strukt, p).ok(), want, "{strukt}.{p:?}");
        }
        assert!(matches!(
            ours.offset("sock", &["no_such_member"]),
            Err(OffsetError::Missing(_))
        ));
        assert!(ours.has_type("btf_trace_sys_enter"));
        assert!(!ours.has_type("no_such_type_anywhere"));
        ours.kernel_offsets().unwrap();
    }
}
