//! Auto-renewal of invisible time. A push consumer asks for `auto_renew` and keeps messages in
//! a local cache for as long as it needs: the proxy extends their invisibility before it
//! runs out, until the client acks, changes, dead-letters or goes away (or a cap is hit). The
//! client keeps using the handle it received; the proxy maps it to the latest one.

use rdmq_transport::sync::Plain;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::service::MessagingProxy;

/// How long one message is renewed at most.
pub(super) const MAX_RENEW: Duration = Duration::from_secs(3 * 3600);
/// How often due renewals are looked for.
const TICK: Duration = Duration::from_millis(200);

/// The latest handle of a renewed message, locked while a renewal is in flight.
type Current = Arc<tokio::sync::Mutex<Option<String>>>;

#[derive(Debug)]
struct Entry {
    client: String,
    group: String,
    invisible: Duration,
    until: Instant,
    renew_at: Instant,
    /// The latest handle; locked while a renewal is in flight, so an ack never uses a handle
    /// that is being replaced.
    current: Current,
}

/// Messages being renewed, by the handle their client holds.
#[derive(Debug, Default)]
pub(super) struct Renewals {
    map: Mutex<HashMap<String, Entry>>,
}

fn renew_at(now: Instant, invisible: Duration) -> Instant {
    now + invisible.saturating_sub((invisible / 4).min(Duration::from_secs(10)))
}

impl Renewals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().plain()
    }

    /// Starts renewing `handle`, delivered to `client` of `group` for `invisible`.
    pub(super) fn track(&self, client: &str, group: &str, handle: &str, invisible: Duration) {
        let now = Instant::now();
        self.lock().insert(
            handle.to_owned(),
            Entry {
                client: client.to_owned(),
                group: group.to_owned(),
                invisible,
                until: now + MAX_RENEW,
                renew_at: renew_at(now, invisible),
                current: Arc::new(tokio::sync::Mutex::new(Some(handle.to_owned()))),
            },
        );
    }

    /// Stops renewing `handle` and returns the handle to use for it now (itself when it was
    /// not renewed).
    pub(super) async fn take(&self, handle: &str) -> String {
        let Some(entry) = self.lock().remove(handle) else {
            return handle.to_owned();
        };
        // Wait for a renewal in flight to finish.
        let current = entry.current.lock().await.clone();
        current.unwrap_or_else(|| handle.to_owned())
    }

    /// Stops renewing everything of `client` (it went away; its messages come back after
    /// their invisible time).
    pub(super) fn forget_client(&self, client: &str) {
        self.lock().retain(|_, e| e.client != client);
    }

    /// Messages being renewed.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl MessagingProxy {
    /// Renews due messages until the service shuts down.
    pub(super) fn start_renewer(&self) {
        let this = self.clone();
        let mut shutdown = self.shared.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                this.renew_due().await;
            }
        });
    }

    async fn renew_due(&self) {
        let now = Instant::now();
        let due: Vec<(String, String, Duration, Current)> = {
            let mut map = self.shared.renewals.lock();
            map.retain(|_, e| e.until > now);
            map.iter_mut()
                .filter(|(_, e)| e.renew_at <= now)
                .map(|(k, e)| {
                    // Not again before this renewal is done (a failed one drops the entry).
                    e.renew_at = now + e.invisible;
                    (k.clone(), e.group.clone(), e.invisible, e.current.clone())
                })
                .collect()
        };
        for (key, group, invisible, current) in due {
            let mut slot = current.lock().await;
            let Some(handle) = slot.clone() else { continue };
            match self
                .shared
                .cluster
                .change_invisible(&group, &handle, invisible)
                .await
            {
                Ok(changed) => {
                    *slot = Some(changed.handle);
                    if let Some(e) = self.shared.renewals.lock().get_mut(&key) {
                        e.renew_at = renew_at(Instant::now(), invisible);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e.message, "auto-renewal failed; the message returns after its invisible time");
                    self.shared.renewals.lock().remove(&key);
                }
            }
        }
    }
}
