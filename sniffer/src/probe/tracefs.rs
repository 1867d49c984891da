//! tracefs: mounted when missing (classic tracepoints are attached by the ids it publishes), and
//! the record layouts of the tracepoints we read, from their `format` files.
use std::{
    collections::HashMap,
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use sniffer_common::{OFFSET_ABSENT, TracepointOffsets};

/// Where tracefs lives on current kernels, and where older setups have it.
const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at {path} failed: {source}; \
         run as root, or mount it yourself: mount -t tracefs nodev {path}"
    )]
    Mount { path: String, source: io::Error },
    #[error("cannot read tracepoint format {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("tracepoint format {path} has no field `{field}`")]
    Field { path: String, field: String },
}

/// The tracefs root, mounting tracefs first when it is not mounted anywhere.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(root) = MOUNT_POINTS
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(root.to_path_buf());
    }
    let target = MOUNT_POINTS[0];
    let err = |source| TracefsError::Mount {
        path: target.to_owned(),
        source,
    };
    let c = |s: &str| CString::new(s).map_err(|e| err(io::Error::other(e)));
    let (src, dst, fstype) = (c("nodev")?, c(target)?, c("tracefs")?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {target}");
    Ok(PathBuf::from(target))
}

/// Field name -> byte offset, from a tracepoint `format` file.
///
/// Lines look like `\tfield:unsigned long buf;\toffset:24;\tsize:8;\tsigned:0;`; the name is the
/// declaration's last word, without an array suffix (`char comm[16]`, `__data_loc char[] name`).
pub fn parse_format(text: &str) -> HashMap<String, u32> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let mut decl = None;
        let mut offset = None;
        for part in line.trim().split(';') {
            let part = part.trim();
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d);
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.trim().parse::<u32>().ok();
            }
        }
        if let (Some(decl), Some(offset)) = (decl, offset)
            && let Some(last) = decl.split_whitespace().last()
        {
            let name = last.split('[').next().unwrap_or(last);
            fields.insert(name.to_owned(), offset);
        }
    }
    fields
}

fn format_of(
    root: &Path,
    category: &str,
    name: &str,
) -> Result<(String, HashMap<String, u32>), TracefsError> {
    let path = root.join("events").join(category).join(name).join("format");
    let shown = path.display().to_string();
    let text = fs::read_to_string(&path).map_err(|source| TracefsError::Read {
        path: shown.clone(),
        source,
    })?;
    Ok((shown, parse_format(&text)))
}

fn field(path: &str, fields: &HashMap<String, u32>, name: &str) -> Result<u32, TracefsError> {
    fields
        .get(name)
        .copied()
        .ok_or_else(|| TracefsError::Field {
            path: path.to_owned(),
            field: name.to_owned(),
        })
}

/// The record offsets the BPF programs need, read from this kernel's format files.
pub fn tracepoint_offsets(root: &Path) -> Result<TracepointOffsets, TracefsError> {
    let (path, exec) = format_of(root, "sched", "sched_process_exec")?;
    let exec_old_pid = field(&path, &exec, "old_pid")?;
    let (_, exit) = format_of(root, "sched", "sched_process_exit")?;
    Ok(TracepointOffsets {
        exec_old_pid,
        exit_group_dead: exit.get("group_dead").copied().unwrap_or(OFFSET_ABSENT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS_ENTER_RECVFROM: &str = "name: sys_enter_recvfrom\nID: 2222\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
\n\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:void * ubuf;\toffset:24;\tsize:8;\tsigned:0;\n\
\n\
print fmt: \"fd: 0x%08lx\", ((unsigned long)(REC->fd))\n";

    #[test]
    fn format_fields_by_last_word() {
        let f = parse_format(SYS_ENTER_RECVFROM);
        assert_eq!(f.get("__syscall_nr"), Some(&8));
        assert_eq!(f.get("fd"), Some(&16));
        assert_eq!(f.get("ubuf"), Some(&24));
        assert_eq!(f.get("common_pid"), Some(&4));
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn format_array_and_data_loc_names() {
        let text = "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                    \tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
                    \tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";
        let f = parse_format(text);
        assert_eq!(f.get("comm"), Some(&8));
        assert_eq!(f.get("filename"), Some(&8));
        assert_eq!(f.get("group_dead"), Some(&32));
    }

    #[test]
    fn format_ignores_noise() {
        assert!(
            parse_format("name: x\nID: 1\nprint fmt: \"%d\"\n\tfield:int broken;\n").is_empty()
        );
    }
}
