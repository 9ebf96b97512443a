//! A monotonically advancing commit-log position (written, durable) that appenders wait on.
//! Unlike a broadcast of every change, advancing wakes only the waiters it satisfies, so a
//! thousand producers waiting on small group commits cost one wake-up each.

use crate::poison::OrAbort;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

/// A position and the waiters for positions beyond it.
#[derive(Debug)]
pub(crate) struct Watermark {
    value: AtomicU64,
    waiters: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
}

impl Watermark {
    pub(crate) fn new(value: u64) -> Self {
        Self {
            value: AtomicU64::new(value),
            waiters: Mutex::new(BTreeMap::new()),
        }
    }

    /// The current position.
    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// Moves to `value` and wakes every waiter for a position at or below it.
    pub(crate) fn advance(&self, value: u64) {
        self.value.fetch_max(value, Ordering::AcqRel);
        let ready = {
            let mut w = self.waiters.lock().or_abort("flush waiters");
            let rest = w.split_off(&(value + 1));
            std::mem::replace(&mut *w, rest)
        };
        for tx in ready.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    /// Resolves once the position reaches `end`; `false` if the watermark was dropped first.
    pub(crate) async fn wait(&self, end: u64) -> bool {
        if self.get() >= end {
            return true;
        }
        let rx = {
            let mut w = self.waiters.lock().or_abort("flush waiters");
            // Re-checked under the lock: `advance` stores before it takes the lock, so either
            // this sees the new value or `advance` sees this waiter.
            if self.get() >= end {
                return true;
            }
            let (tx, rx) = oneshot::channel();
            w.entry(end).or_default().push(tx);
            rx
        };
        rx.await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn wakes_exactly_the_satisfied_waiters() {
        let wm = Arc::new(Watermark::new(10));
        assert!(wm.wait(5).await);
        let (a, b) = (wm.clone(), wm.clone());
        let low = tokio::spawn(async move { a.wait(20).await });
        let high = tokio::spawn(async move { b.wait(30).await });
        tokio::task::yield_now().await;
        wm.advance(25);
        assert!(low.await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!high.is_finished());
        wm.advance(30);
        assert!(high.await.unwrap());
        // Never moves back.
        wm.advance(1);
        assert_eq!(wm.get(), 30);
    }
}
