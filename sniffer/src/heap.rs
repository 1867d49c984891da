//! Giving freed heap memory back to the kernel.

/// Returns the allocator's free memory to the kernel, so that sniffer's RSS follows the load.
/// The binary's allocator is mimalloc (see main.rs), which gives back idle pages on its own
/// after a delay; this does it now. (glibc's malloc_trim too, for what glibc's malloc holds:
/// memory some libraries allocate before main.)
pub fn trim() {
    // SAFETY: mi_collect only releases free memory of the calling thread's heap and the
    // abandoned ones.
    unsafe { libmimalloc_sys::mi_collect(true) };
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// mimalloc's options, before the run allocates much: commit memory as it is used, not a whole
/// segment at a time (the start parses 5 MiB of kernel BTF), and give freed pages back at once.
pub fn configure() {
    // mimalloc's option numbers (mimalloc.h; v3, which the crate builds, keeps v2's): eager_commit 3, arena_eager_commit 4,
    // purge_delay 15.
    const EAGER_COMMIT: libmimalloc_sys::mi_option_t = 3;
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: options are set before other threads exist.
    unsafe {
        libmimalloc_sys::mi_option_set(EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}
