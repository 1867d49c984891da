//! Where OpenSSL's functions sit in a library file, read once per library: a uprobe is placed
//! at a file offset, and a traced process gets its own probes on every library it may call.

use std::path::Path;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("reading {0}: {1}")]
    Read(String, #[source] std::io::Error),
    #[error("{0} is not an ELF file sniffer can read: {1}")]
    Parse(String, #[source] object::Error),
}

/// A library file's bytes and where some of its functions are in them.
pub struct Functions {
    pub data: Vec<u8>,
    /// Per name asked for: the function's file offset and the file range of its section
    /// (`None`: not defined there).
    pub at: Vec<Option<(u64, std::ops::Range<u64>)>>,
}

/// The file offset of each of `names` defined in the ELF file at `path` (`None`: not there).
pub fn file_offsets(path: &Path, names: &[&str]) -> Result<Vec<Option<u64>>, SymbolError> {
    Ok(functions(path, names)?
        .at
        .into_iter()
        .map(|f| f.map(|(off, _)| off))
        .collect())
}

/// Reads the ELF file at `path` and finds `names` in it. A symbol's address is virtual; the
/// uprobe wants the byte in the file, so the address is moved by its section's place in
/// memory and in the file (ELF, "Sections").
pub fn functions(path: &Path, names: &[&str]) -> Result<Functions, SymbolError> {
    let shown = || path.display().to_string();
    let data = std::fs::read(path).map_err(|e| SymbolError::Read(shown(), e))?;
    let file = object::File::parse(&*data).map_err(|e| SymbolError::Parse(shown(), e))?;
    let relocate = matches!(
        file.kind(),
        object::ObjectKind::Dynamic | object::ObjectKind::Executable
    );
    let mut at = vec![None; names.len()];
    // A shared library exports its API in .dynsym; .symtab, when not stripped, has the same.
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if !sym.is_definition() {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let Some(i) = names.iter().position(|n| *n == name) else {
            continue;
        };
        if at[i].is_some() {
            continue;
        }
        let section = sym
            .section_index()
            .and_then(|ix| file.section_by_index(ix).ok())
            .and_then(|s| Some((s.address(), s.file_range()?)));
        at[i] = match section {
            Some((addr, (off, size))) if relocate => sym
                .address()
                .checked_sub(addr)
                .map(|d| (d + off, off..off + size)),
            Some((_, (off, size))) => Some((sym.address(), off..off + size)),
            None if !relocate => Some((sym.address(), 0..data.len() as u64)),
            None => None,
        };
    }
    Ok(Functions { data, at })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary's own functions: a symbol found, its offset inside the file, and a
    /// name that is not there.
    #[test]
    fn finds_defined_functions_at_offsets_inside_the_file() {
        let exe = std::env::current_exe().unwrap();
        let size = std::fs::metadata(&exe).unwrap().len();
        let got = file_offsets(&exe, &["main", "no_such_function_anywhere"]).unwrap();
        let main = got[0].expect("main is defined");
        assert!(main > 0 && main < size, "{main} in {size}");
        assert_eq!(got[1], None);
    }

    /// The system's OpenSSL, where installed: the bytes at each offset found in the file are
    /// the bytes the dynamic loader puts at the function's address (dlopen, dlsym).
    #[test]
    fn openssl_functions_are_where_the_loader_puts_them() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !lib.exists() {
            eprintln!("no {}: skipped", lib.display());
            return;
        }
        let names = ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_do_handshake"];
        let bytes = std::fs::read(lib).unwrap();
        let c_lib = std::ffi::CString::new(lib.to_str().unwrap()).unwrap();
        // SAFETY: dlopen of a library by path; the handle stays open for the test's life.
        let handle = unsafe { libc::dlopen(c_lib.as_ptr(), libc::RTLD_NOW) };
        assert!(!handle.is_null(), "dlopen {}", lib.display());
        for (name, off) in names.iter().zip(file_offsets(lib, &names).unwrap()) {
            let off = off.unwrap_or_else(|| panic!("{name} not found")) as usize;
            let c_name = std::ffi::CString::new(*name).unwrap();
            // SAFETY: a symbol of the library just opened.
            let addr = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
            assert!(!addr.is_null(), "dlsym {name}");
            // SAFETY: the function's first 16 bytes are mapped code of the loaded library.
            let loaded = unsafe { std::slice::from_raw_parts(addr as *const u8, 16) };
            // A uprobe placed on the function in every process (a sniffer running beside the
            // tests with its TLS probes on all of them) shows as an int3 in its first byte.
            let first = if loaded[0] == 0xcc { 1 } else { 0 };
            assert_eq!(
                &bytes[off + first..off + 16],
                &loaded[first..],
                "{name} at {off:#x}"
            );
        }
    }

    #[test]
    fn not_elf_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.so");
        std::fs::write(&p, b"not an ELF file").unwrap();
        assert!(matches!(
            file_offsets(&p, &["SSL_read"]),
            Err(SymbolError::Parse(..))
        ));
    }
}
