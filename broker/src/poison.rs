//! Locks on the broker's in-memory state. A poisoned lock means a panic interrupted an update
//! of state the store, the pop service or the timers rely on (indexes, offsets, the append
//! queue, in-flight pops); serving from it could hand out wrong offsets or lose track of
//! messages. The broker is crash-only: everything it acknowledged is in the commit log and
//! recovery rebuilds the rest from there, so it stops at once rather than carry on with state
//! nobody can vouch for.

use std::sync::PoisonError;

/// `.or_abort("what")` on a lock result: the guard, or a logged abort of the process.
pub(crate) trait OrAbort<G> {
    /// The guard; on a poisoned lock, logs what it guards and aborts.
    fn or_abort(self, what: &str) -> G;
}

impl<G> OrAbort<G> for Result<G, PoisonError<G>> {
    fn or_abort(self, what: &str) -> G {
        match self {
            Ok(g) => g,
            Err(_) => {
                tracing::error!(
                    state = what,
                    "a panic left broker state half-updated; stopping so recovery rebuilds it from the commit log"
                );
                eprintln!(
                    "rdmq-broker: a panic left {what} half-updated; aborting (restart recovers from the commit log)"
                );
                std::process::abort()
            }
        }
    }
}
