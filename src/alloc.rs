//! Giving freed memory back to the system.
//!
//! glibc keeps freed heap memory in its arenas for reuse, so after a burst of
//! large client buffers (an attack, a reconnect storm) the process would stay at
//! its peak size for good. `malloc_trim` returns the free pages; it costs a walk
//! of the arenas, so the loop calls it only after a large amount was freed.

/// Returns free heap pages to the system.
pub fn trim() {
    // SAFETY: malloc_trim only releases memory the allocator holds unused.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
