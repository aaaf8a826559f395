//! The C allocator's settings for a process that runs plugins.

/// Below this size a block is carved from the allocator's heap, above it mapped on
/// its own: glibc's largest, so that a batch's buffers come from the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Freed memory at the top of a heap is given back to the system only above this.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 64 << 20;

/// The largest block kept in a "fast bin" when freed: none. Fast bins defer the
/// merging of small free blocks until a large block is freed or requested, and then
/// merge them all at once, under the arena's lock.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MAX_FAST: libc::c_int = 0;

/// Tells the C allocator to keep the memory a batch frees for the next batch,
/// instead of giving it back to the system after every batch. Returns whether the
/// allocator took the settings (only glibc's does; elsewhere this does nothing).
///
/// Plugins allocate with the process's C allocator (a Rust cdylib's default), and
/// with its default settings glibc returns the memory a large batch frees on any
/// thread but the main one, then faults it back in on the next batch. Plugins run
/// on worker threads: with 10,000 records per batch that was about 3,000 page faults
/// per batch, and a plugin ran at about 0.65× the speed of the same work on the main
/// thread (BENCHMARKS.md). With these settings there are no faults and no gap.
///
/// It also turns glibc's fast bins off. Parsing a batch frees thousands of small
/// blocks, which fast bins leave unmerged until the next large block is freed: that
/// is the plugin's output, freed by the caller on another thread, which then merged
/// the worker's blocks, cold in its cache, for 0.14 ms of a 1.6 ms batch of 1,000
/// records. Small blocks are still cached per thread (glibc's tcache).
///
/// The settings are process-wide and keep up to 64 MiB of freed memory per
/// allocator arena (one per busy thread, up to 8 per core) for reuse. Call this
/// once, at the start of `main`, as the `plugbay` binary does.
///
/// # Examples
///
/// ```
/// let tuned = plugbay_host::tune_allocator();
/// assert_eq!(tuned, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` has no preconditions: it sets one of the allocator's
        // tunables under the allocator's own lock, and blocks already allocated keep
        // working (the thresholds only decide where new blocks come from and when
        // free memory is returned).
        let set = |param, value| unsafe { libc::mallopt(param, value) } == 1;
        let mmap = set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        let trim = set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        let fast = set(libc::M_MXFAST, MAX_FAST);
        mmap && trim && fast
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Gives the memory the C allocator holds free back to the system, in every arena
/// (glibc's `malloc_trim`; elsewhere nothing). Called after a worker is abandoned: no
/// more frees come to its thread's arena, so what that arena holds free would stay
/// there for good (up to the trim threshold of [`tune_allocator`], 64 MiB).
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

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far.
    fn faults() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let fields = &stat[stat.rfind(')').unwrap() + 2..];
        fields.split_whitespace().nth(7).unwrap().parse().unwrap()
    }

    /// Allocates about 16 MiB in small blocks, touches them and frees them.
    fn churn() {
        let blocks: Vec<Vec<u8>> = (0..64 * 1024).map(|i| vec![i as u8; 256]).collect();
        std::hint::black_box(&blocks);
    }

    #[test]
    fn a_worker_thread_reuses_the_memory_it_freed() {
        assert!(tune_allocator());
        let faults = std::thread::spawn(|| {
            churn();
            let before = faults();
            for _ in 0..4 {
                churn();
            }
            faults() - before
        })
        .join()
        .unwrap();
        // 16 MiB given back and taken again would be 4,096 faults a round.
        assert!(faults < 1_000, "{faults} page faults in 4 rounds");
    }

    /// Bytes in blocks that wait, unmerged, in fast bins, over all arenas.
    fn in_fast_bins() -> usize {
        // SAFETY: `mallinfo2` only reads the allocator's statistics, under its locks.
        unsafe { libc::mallinfo2() }.fsmblks
    }

    #[test]
    fn small_blocks_are_merged_as_they_are_freed() {
        assert!(tune_allocator());
        // Blocks freed before the settings (by other tests) are merged now.
        // SAFETY: `malloc_trim` merges and returns free memory under the allocator's
        // locks; blocks in use are untouched.
        unsafe { libc::malloc_trim(0) };
        std::thread::spawn(|| {
            // Far more than the per-thread cache holds (7 blocks of each size).
            let blocks: Vec<Vec<u8>> = (0..10_000).map(|i| vec![i as u8; 48]).collect();
            drop(blocks);
        })
        .join()
        .unwrap();
        assert_eq!(in_fast_bins(), 0, "small blocks wait in fast bins");
    }
}
