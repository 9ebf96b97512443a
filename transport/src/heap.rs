//! Giving freed heap memory back to the system. glibc's allocator keeps what connections
//! freed in its arenas, so a server's resident memory only ever grows with connection churn
//! (measured: 2,000-connection cycles took a broker from 1 to 143 MiB of anonymous memory,
//! never returned). Servers tell a [`TrimAfterCloses`] when connections close; elsewhere
//! (other C libraries) [`release_free_memory`] does nothing.

#![allow(unsafe_code)]

/// Returns free pages of every malloc arena to the system (`malloc_trim(0)`): a walk of the
/// arenas, about a millisecond per hundred MiB; call it off the hot path.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only inspects and releases the allocator's own free memory; it
    // takes the arena locks itself and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives freed memory back a second after connections close: the first close of a burst
/// schedules one [`release_free_memory`] (off the runtime's threads), later ones in that
/// second ride on it. Outside a tokio runtime it does nothing.
#[derive(Debug, Default)]
pub struct TrimAfterCloses {
    scheduled: std::sync::atomic::AtomicBool,
}

impl TrimAfterCloses {
    /// How long after a close the trim runs.
    pub const DELAY: std::time::Duration = std::time::Duration::from_secs(1);

    /// Call when a connection has closed.
    pub fn connection_closed(self: &std::sync::Arc<Self>) {
        use std::sync::atomic::Ordering;
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        rt.spawn(async move {
            tokio::time::sleep(Self::DELAY).await;
            this.scheduled.store(false, Ordering::Release);
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        });
    }
}
