//! The revive thread: messages whose invisible time passed go to the retry topic (attempt + 1)
//! or the dead-letter topic; snapshots of the pop state bound the replay after a crash.

use super::*;

impl Inner {
    /// The revive thread: revives due messages every tick, snapshots every few seconds.
    pub(super) fn run(self: Arc<Self>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "pop revive thread cannot start");
                return;
            }
        };
        let mut last_snapshot = Instant::now();
        let mut snapshot_at = self.lock_state().log_offset;
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            match rt.block_on(self.revive_due()) {
                Ok(0) => {}
                Ok(_) => self.available.notify_waiters(),
                Err(e) => tracing::error!(error = %e, "revive failed; retrying"),
            }
            let logged = self.lock_state().log_offset;
            if logged != snapshot_at
                && (stopping
                    || last_snapshot.elapsed() >= SNAPSHOT_EVERY
                    || logged - snapshot_at >= SNAPSHOT_RECORDS)
            {
                match rt.block_on(self.save_snapshot()) {
                    Ok(at) => {
                        snapshot_at = at;
                        last_snapshot = Instant::now();
                    }
                    Err(e) => tracing::error!(error = %e, "pop snapshot failed"),
                }
            }
            if stopping {
                return;
            }
            std::thread::sleep(self.cfg.tick);
        }
    }

    /// Revives in-flight messages whose deadline passed; returns how many.
    async fn revive_due(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let due: Vec<state::Deadline> = self
            .lock_state()
            .deadlines
            .iter()
            .take_while(|d| d.0 <= now)
            .take(1024)
            .cloned()
            .collect();
        let mut end = 0;
        let mut n = 0;
        for (_, key, offset, seq) in due {
            let max_attempts = self
                .lock_groups()
                .get(&key.group)
                .map(|g| g.max_attempts)
                .unwrap_or(self.cfg.default_max_attempts);
            let mut st = self.lock_state();
            let Some(f) = st.current(&key, offset, seq).copied() else {
                continue;
            };
            let stored = self
                .store
                .queue(&key.topic, key.queue)
                .and_then(|q| q.entry(offset))
                .and_then(|e| self.store.read_entry(&e).ok())
                .and_then(|rec| message::decode_record(&rec).ok());
            let dead = f.attempt >= max_attempts;
            let (outcome, copy) = match (&stored, f.fifo, dead) {
                (None, _, _) => {
                    tracing::warn!(topic = %key.topic, queue = key.queue, offset, "in-flight message no longer stored; dropped");
                    (ReviveOutcome::DeadLetter, None)
                }
                (Some(m), _, true) => (
                    ReviveOutcome::DeadLetter,
                    Some(self.copy_for(m, &key.group, &dlq_topic(&key.group), f.attempt)?),
                ),
                (Some(_), true, false) => (ReviveOutcome::Redeliver, None),
                (Some(m), false, false) => {
                    let orig = original_topic(m).unwrap_or_else(|| m.topic.clone());
                    let retry = retry_topic(&key.group, &orig);
                    (
                        ReviveOutcome::Retry,
                        Some(self.copy_for(m, &key.group, &retry, f.attempt)?),
                    )
                }
            };
            let r = PopRecord::Revive {
                key,
                offset,
                seq,
                outcome,
            };
            end = end.max(self.log(&mut st, copy.into_iter().collect(), &[r])?);
            n += 1;
        }
        if end > 0 {
            self.store.wait_stored(end, WAIT).await?;
        }
        Ok(n)
    }

    /// A copy of `m` for `topic` (retry or dead-letter) after `attempts` deliveries.
    pub(super) fn copy_for(
        &self,
        m: &StoredMessage,
        _group: &str,
        topic: &str,
        attempts: u32,
    ) -> Result<NewMessage, StoreError> {
        self.store.ensure_system_topic(topic, 1)?;
        let mut p = Properties::parse(&m.properties).unwrap_or_default();
        p.remove(prop::POP_CK);
        if p.get(prop::RETRY_TOPIC).is_none() {
            p.set(prop::RETRY_TOPIC, m.topic.clone());
        }
        if p.get(prop::ORIGIN_MESSAGE_ID).is_none() {
            let id = p
                .get(prop::UNIQ_KEY)
                .map(str::to_owned)
                .unwrap_or_else(|| message::offset_msg_id(m.store_host, m.physical_offset));
            p.set(prop::ORIGIN_MESSAGE_ID, id);
        }
        let mut nm = NewMessage::from_stored(m, topic, 0, p.encode());
        nm.reconsume_times = attempts as i32;
        Ok(nm)
    }

    /// Writes a snapshot of everything logged and written so far; returns its log offset.
    async fn save_snapshot(&self) -> Result<i64, StoreError> {
        let (snap, end) = {
            let st = self.lock_state();
            (st.snapshot(), self.store.log_end())
        };
        // Everything the snapshot reflects must be in the log before the snapshot exists.
        self.store.wait_stored(end, WAIT).await?;
        meta::save_json(&self.dir, SNAPSHOT, &snap)?;
        Ok(snap.log_offset)
    }
}
