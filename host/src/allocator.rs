//! The host's side of the C allocator. Plugins allocate from their own allocator
//! (the one `#[plugbay::plugin]` declares for the library; see docs/plugins.md), so
//! the host leaves the process's allocator settings as its user set them.

/// Gives the memory the C allocator holds free back to the system, in every arena
/// (glibc's `malloc_trim`; elsewhere nothing). Called after a worker is abandoned: no
/// more frees come to its thread's arena, so what that arena holds free would stay
/// there for good (a plugin built with `global_allocator = false` allocates there).
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` has no preconditions: it returns free memory to the
        // system under each arena's lock, and leaves allocated blocks untouched.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
