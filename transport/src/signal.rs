//! A one-shot "this link is dead, and here is why" signal shared by a link's halves.

use std::sync::OnceLock;

use tokio::sync::Notify;

use crate::error::TransportError;

/// Set once; every waiter (present and future) sees the reason.
#[derive(Debug, Default)]
pub struct DeadSignal {
    reason: OnceLock<TransportError>,
    notify: Notify,
}

impl DeadSignal {
    /// Marks the link dead. The first reason wins.
    pub fn trigger(&self, reason: TransportError) {
        if self.reason.set(reason).is_ok() {
            self.notify.notify_waiters();
        }
    }

    /// The reason, if triggered.
    pub fn reason(&self) -> Option<&TransportError> {
        self.reason.get()
    }

    /// Waits until triggered and returns the reason.
    pub async fn wait(&self) -> TransportError {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.reason.get() {
                return r.clone();
            }
            notified.await;
        }
    }
}
