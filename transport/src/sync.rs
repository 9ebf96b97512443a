//! Locks on plain containers — connection pools, registries, caches, free lists — whose every
//! update is one insert, remove or push under the lock. A panic elsewhere while such a lock was
//! held cannot leave the container half-updated, so a poisoned lock is taken over as it is.
//! State with invariants across fields (a link's slots and credits, a connection's calls, the
//! broker's store) does not use this: it fails its link, connection or process instead.

use std::sync::{LockResult, PoisonError};

/// `.plain()` on a lock result: the guard, poisoned or not (see the module docs for when).
pub trait Plain<G> {
    /// The guard, taking over a poisoned lock.
    fn plain(self) -> G;
}

impl<G> Plain<G> for LockResult<G> {
    fn plain(self) -> G {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}
