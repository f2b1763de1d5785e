//! Giving freed heap memory back to the operating system after bulk work.
//!
//! The first sync and the midnight re-read parse thousands of Graph responses at once; glibc's
//! allocator keeps the freed pages in its per-thread arenas, so the process would go on
//! showing the peak as resident memory for hours. Trimming after those passes makes the
//! resident size reflect what the service actually holds.

pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only works on glibc's own free lists; it is
    // safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
