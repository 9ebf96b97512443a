//! Giving freed heap memory back to the system. glibc's allocator keeps what connections
//! freed in its arenas, so a server's resident memory only ever grows with connection churn
//! (measured: 2,000-connection cycles took a broker from 1 to 143 MiB of anonymous memory,
//! never returned). Servers call [`release_free_memory`] after connections close; elsewhere
//! (other C libraries) it does nothing.

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
