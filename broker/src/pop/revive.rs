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
                    self.dead_letter(m, &key, f.attempt)?,
                ),
                (Some(_), true, false) => (ReviveOutcome::Redeliver, None),
                (Some(m), false, false) => {
                    let orig = original_topic(m).unwrap_or_else(|| m.topic.clone());
                    let retry = retry_topic(&key.group, &orig);
                    match self.copy_for(m, &key.group, &retry, f.attempt) {
                        Ok(copy) => (ReviveOutcome::Retry, Some(copy)),
                        // This group's retry topic cannot exist (a name an earlier version
                        // let through): dead-letter the message rather than stop the pass
                        // for every group.
                        Err(StoreError::Illegal(why)) => {
                            tracing::warn!(group = %key.group, topic = %orig, %why, "retry topic refused; dead-lettering instead");
                            (
                                ReviveOutcome::DeadLetter,
                                self.dead_letter(m, &key, f.attempt)?,
                            )
                        }
                        Err(e) => return Err(e),
                    }
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

    /// The dead-letter copy of `m`, or none when the group's dead-letter topic cannot exist
    /// (the delivery then ends here, logged; the message stays in its own topic). Only a
    /// refused name is absorbed: a store failure still fails the pass, to be retried.
    fn dead_letter(
        &self,
        m: &StoredMessage,
        key: &QueueKey,
        attempts: u32,
    ) -> Result<Option<NewMessage>, StoreError> {
        match self.copy_for(m, &key.group, &dlq_topic(&key.group), attempts) {
            Ok(copy) => Ok(Some(copy)),
            Err(StoreError::Illegal(why)) => {
                tracing::error!(group = %key.group, topic = %key.topic, offset = m.queue_offset, %why, "dead-letter topic refused; delivery ended without a dead-letter copy");
                Ok(None)
            }
            Err(e) => Err(e),
        }
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
        // Encoded under the lock straight from the live state (no deep copy); written outside.
        let (bytes, at, end) = {
            let st = self.lock_state();
            (st.encode_snapshot(), st.log_offset, self.store.log_end())
        };
        // Everything the snapshot reflects must be in the log before the snapshot exists.
        self.store.wait_stored(end, WAIT).await?;
        // The revive thread's own: no runtime thread waits for this write.
        meta::save_bytes(&self.dir, SNAPSHOT, &bytes)?;
        match std::fs::remove_file(self.dir.join(SNAPSHOT_JSON)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::HostAddr;
    use crate::store::StoreConfig;
    use crate::store::meta::TopicConfig;

    fn request(group: &str) -> PopRequest {
        PopRequest {
            group: group.into(),
            topic: "T".into(),
            queue: -1,
            max: 1,
            invisible_ms: 500,
            poll: Duration::ZERO,
            filter: TagFilter::parse("*"),
            fifo: false,
        }
    }

    /// State an earlier version let in: a group whose retry and dead-letter topics cannot
    /// exist has a message in flight. Its revival must not stop the other group's, also after
    /// a restart that recovers both deliveries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_group_whose_retry_topic_cannot_exist_does_not_stop_redelivery_for_others_across_restart()
     {
        let dir = std::env::temp_dir().join(format!("rdmq-revive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = StoreConfig::new(dir.join("store"));
        cfg.segment_size = 1 << 20;
        let store = Store::open(cfg).unwrap();
        store.put_topic(TopicConfig::new("T", 1)).unwrap();
        let m = NewMessage {
            topic: "T".into(),
            queue_id: 0,
            flag: 0,
            sys_flag: 0,
            born_timestamp: now_ms(),
            born_host: HostAddr::default(),
            reconsume_times: 0,
            properties: String::new(),
            body: Bytes::from_static(b"hello"),
        };
        store.put(&[m]).await.unwrap();
        let pop = PopService::start(
            store.clone(),
            &dir.join("pop"),
            PopConfig {
                tick: Duration::from_millis(10),
                ..PopConfig::default()
            },
        )
        .unwrap();
        // Straight to the delivery path, past the request checks that now refuse this name.
        for group in ["../../x", "good"] {
            let got = pop.inner.try_pop(&request(group), 1).await.unwrap();
            assert_eq!(got.messages.len(), 1, "{group}");
        }
        // Across a restart: both deliveries come back from the pop log, still in flight.
        pop.shutdown();
        let cfg = PopConfig {
            tick: Duration::from_millis(10),
            ..PopConfig::default()
        };
        let pop = PopService::start(store.clone(), &dir.join("pop"), cfg).unwrap();
        assert_eq!(
            pop.inner.lock_state().deadlines.len(),
            2,
            "recovered in flight"
        );
        let retry = retry_topic("good", "T");
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.queue(&retry, 0).is_none_or(|q| q.entry(0).is_none()) {
            assert!(
                Instant::now() < deadline,
                "the good group's message was never revived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The bad group's delivery ended without a copy anywhere; nothing is left in flight.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pop.inner.lock_state().deadlines.is_empty() {
            assert!(Instant::now() < deadline, "a delivery stayed in flight");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(store.topic(&dlq_topic("../../x")).is_none());
        assert!(store.topic(&retry_topic("../../x", "T")).is_none());
        pop.shutdown();
        store.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
