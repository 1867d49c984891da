//! The heap: mimalloc as the allocator, and giving freed memory back to the kernel.

use std::{
    alloc::{GlobalAlloc, Layout},
    ffi::c_void,
};

use libmimalloc_sys as mi;

/// mimalloc, called by its plain entry points for what needs no more than the alignment every
/// block has (the `mimalloc` crate's allocator always takes the aligned ones, whose blocks of
/// over 1 KiB, or not a power of two, go through a slower path that allocates more than
/// asked). Most of the daemon's allocations are byte buffers and structs of 8-byte alignment.
pub struct Mimalloc;

/// The alignment of every block mimalloc's plain `mi_malloc` returns: its sizes are whole
/// machine words and its pages start aligned.
const PLAIN_ALIGN: usize = std::mem::size_of::<usize>();

// SAFETY: each call goes to mimalloc with the caller's arguments; the plain entry points only
// for layouts whose alignment every mimalloc block has (PLAIN_ALIGN), the aligned ones
// otherwise; mimalloc frees and reallocates blocks of either kind.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// Returns the allocator's free memory to the kernel, so that sniffer's RSS follows the load.
/// The binary's allocator is mimalloc (see main.rs), which gives back idle pages on its own
/// after a delay; this does it now. (glibc's malloc_trim too, for what glibc's malloc holds:
/// memory some libraries allocate before main.)
pub fn trim() {
    // SAFETY: mi_collect only releases free memory of the calling thread's heap and the
    // abandoned ones.
    unsafe { mi::mi_collect(true) };
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
    const EAGER_COMMIT: mi::mi_option_t = 3;
    const ARENA_EAGER_COMMIT: mi::mi_option_t = 4;
    const PURGE_DELAY: mi::mi_option_t = 15;
    // SAFETY: options are set before other threads exist.
    unsafe {
        mi::mi_option_set(EAGER_COMMIT, 0);
        mi::mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi::mi_option_set(PURGE_DELAY, 0);
    }
}
