//! Landlock and seccomp confinement on this kernel, proven both ways: each access is
//! denied without its grant and works with it (or, for what no grant allows, is
//! denied to the plugin), from the hook and from a thread the plugin spawns, while
//! the host's own threads can do all of it.
//!
//! One suite, run twice: with plugins on worker threads of the test process, and
//! in worker processes of their own (`Isolation::Process`), confined as a whole.

/// Plugins on worker threads.
mod thread {
    fn host() -> (plugbay_host::Host, tempfile::TempDir) {
        crate::host()
    }

    include!("suite.rs");
}

/// Plugins in worker processes.
mod process {
    fn host() -> (plugbay_host::Host, tempfile::TempDir) {
        crate::isolation::process_host()
    }

    include!("suite.rs");
}
