//! Giving freed heap memory back to the kernel.

/// Returns the allocator's free memory to the kernel, so that sniffer's RSS follows the load:
/// glibc keeps freed heap for reuse until asked. musl (the static `cargo xtask dist` build) has
/// no malloc_trim and unmaps freed memory itself, so there this does nothing.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
