//! Offsets of the kernel struct members the BPF programs read, from this kernel's BTF.
//!
//! rustc emits no CO-RE relocations for BPF, so instead of compiled-in layouts the programs get
//! these offsets in the config map. A member missing from BTF is an error when capture cannot
//! work without it, and turns a feature off otherwise (IPv6 addresses, unix socket paths).
use std::path::Path;

use btf_rs::{Btf, BtfType as _, Struct, Type};
use sniffer_common::{KernelOffsets, OFFSET_ABSENT};

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error(
        "cannot read kernel BTF at {path}: {source} (a kernel built with CONFIG_DEBUG_INFO_BTF is needed)"
    )]
    Open { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no {0}")]
    Missing(String),
    #[error("kernel BTF: {0} is a bitfield, which sniffer cannot read")]
    Bitfield(String),
    #[error("kernel BTF: {what}: {source}")]
    Btf { what: String, source: btf_rs::Error },
}

/// Looks up member offsets in a BTF blob.
pub struct Layouts {
    btf: Btf,
}

impl Layouts {
    pub fn open(path: &Path) -> Result<Self, OffsetError> {
        Btf::from_file(path)
            .map(|btf| Self { btf })
            .map_err(|source| OffsetError::Open {
                path: path.display().to_string(),
                source,
            })
    }

    fn err(what: &str) -> impl FnOnce(btf_rs::Error) -> OffsetError + '_ {
        move |source| OffsetError::Btf {
            what: what.to_owned(),
            source,
        }
    }

    /// Whether BTF has a type named `name` (a BTF tracepoint's `btf_trace_*` typedef, say).
    pub fn has_type(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .is_ok_and(|t| !t.is_empty())
    }

    /// The struct (or union) named `name`.
    fn named_struct(&self, name: &str) -> Result<Struct, OffsetError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| OffsetError::Missing(format!("struct {name}")))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) | Type::Union(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| OffsetError::Missing(format!("struct {name}")))
    }

    /// The struct or union behind `type_id`, through typedefs and qualifiers.
    fn struct_of(&self, mut type_id: u32, what: &str) -> Result<Option<Struct>, OffsetError> {
        loop {
            let t = self
                .btf
                .resolve_type_by_id(type_id)
                .map_err(Self::err(what))?;
            match t {
                Type::Struct(s) | Type::Union(s) => return Ok(Some(s)),
                Type::Typedef(_)
                | Type::Volatile(_)
                | Type::Const(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => match t.as_btf_type().and_then(|b| b.get_type_id()) {
                    Some(id) => type_id = id,
                    None => return Ok(None),
                },
                _ => return Ok(None),
            }
        }
    }

    /// (bit offset, type id) of member `name` in `s`, looking through anonymous members.
    fn find(&self, s: &Struct, name: &str, what: &str) -> Result<Option<(u32, u32)>, OffsetError> {
        for m in &s.members {
            let mname = self.btf.resolve_name(m).map_err(Self::err(what))?;
            let Some(type_id) = m.get_type_id() else {
                continue;
            };
            if mname == name {
                if m.bitfield_size().is_some_and(|b| b != 0) {
                    return Err(OffsetError::Bitfield(what.to_owned()));
                }
                return Ok(Some((m.bit_offset(), type_id)));
            }
            if mname.is_empty()
                && let Some(inner) = self.struct_of(type_id, what)?
                && let Some((off, id)) = self.find(&inner, name, what)?
            {
                return Ok(Some((m.bit_offset() + off, id)));
            }
        }
        Ok(None)
    }

    /// Byte offset of `path` (members, nested through embedded structs) in `struct strukt`.
    pub fn offset(&self, strukt: &str, path: &[&str]) -> Result<u32, OffsetError> {
        let what = format!("{strukt}.{}", path.join("."));
        let mut s = self.named_struct(strukt)?;
        let mut bits = 0;
        for (i, name) in path.iter().enumerate() {
            let (off, type_id) = self
                .find(&s, name, &what)?
                .ok_or_else(|| OffsetError::Missing(what.clone()))?;
            bits += off;
            if i + 1 < path.len() {
                s = self
                    .struct_of(type_id, &what)?
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
