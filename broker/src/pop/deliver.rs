//! Delivery: choosing what a pop hands out — queue order, retry copies, the group's cursor,
//! tag filters, FIFO locks, the response size — and logging it before answering.

use super::*;

impl Inner {
    /// The cursor a group starts at on a queue: its committed offset when it has one (a
    /// reset before its first pop, or a pull consumer turned Pop), else by the initial mode.
    fn initial_cursor(&self, key: &QueueKey) -> i64 {
        let (topic, queue) = (key.topic.as_str(), key.queue);
        let (min, max) = self.store.offsets(topic, queue);
        if let Some(o) = self.store.committed_offset(&key.group, topic, queue) {
            return o.clamp(min, max);
        }
        if topic.starts_with("%RETRY%") {
            return min;
        }
        match self.cfg.initial {
            InitialOffset::First => min,
            InitialOffset::Last => max,
            InitialOffset::Auto => {
                let fresh = min == 0
                    && self
                        .store
                        .queue(topic, queue)
                        .and_then(|q| q.entry(0))
                        .and_then(|e| self.store.read_entry(&e).ok())
                        .and_then(|rec| crate::store::store_timestamp(&rec))
                        .is_none_or(|ts| now_ms() - ts <= self.cfg.fresh_window.as_millis() as i64);
                if fresh { min } else { max }
            }
        }
    }

    pub(super) async fn try_pop(
        &self,
        req: &PopRequest,
        queues: u32,
    ) -> Result<PopResult, PopError> {
        let now = now_ms();
        let rotation = self.rotate.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<(String, i32)> = if req.queue >= 0 {
            vec![(req.topic.clone(), req.queue)]
        } else {
            (0..queues)
                .map(|i| {
                    (
                        req.topic.clone(),
                        ((i as u64 + rotation) % queues as u64) as i32,
                    )
                })
                .collect()
        };
        if !req.fifo {
            let retry = retry_topic(&req.group, &req.topic);
            if self.store.topic(&retry).is_some() {
                // Retry copies are served first one pop in five, last otherwise.
                if rotation.is_multiple_of(5) {
                    order.insert(0, (retry, 0));
                } else {
                    order.push((retry, 0));
                }
            }
        }
        let mut out = PopResult {
            pop_time: now,
            invisible_ms: req.invisible_ms,
            messages: Vec::new(),
            rest: 0,
        };
        let mut end = 0;
        for (topic, queue) in order {
            let bytes: usize = out.messages.iter().map(|m| m.record.len()).sum();
            let need = if bytes >= MAX_POP_BYTES {
                0
            } else {
                req.max as usize - out.messages.len()
            };
            let key = QueueKey {
                group: req.group.clone(),
                topic,
                queue,
            };
            if need == 0 {
                out.rest += self.backlog(&key);
                continue;
            }
            let bytes_left = MAX_POP_BYTES - bytes;
            if let Some(e) = self.pop_queue(req, key, need, bytes_left, now, &mut out)? {
                end = end.max(e);
            }
        }
        if end > 0 {
            self.store.wait_stored(end, WAIT).await?;
        }
        Ok(out)
    }

    fn backlog(&self, key: &QueueKey) -> i64 {
        let (_, max) = self.store.offsets(&key.topic, key.queue);
        let st = self.lock_state();
        let cursor = st.queues.get(key).map(|q| q.cursor).unwrap_or(max);
        (max - cursor).max(0)
    }

    /// Pops from one queue; returns the log end to wait for if anything was logged.
    fn pop_queue(
        &self,
        req: &PopRequest,
        key: QueueKey,
        need: usize,
        bytes_left: usize,
        now: i64,
        out: &mut PopResult,
    ) -> Result<Option<u64>, PopError> {
        let Some(cq) = self.store.queue(&key.topic, key.queue) else {
            return Ok(None);
        };
        let mut st = self.lock_state();
        let created = !st.queues.contains_key(&key);
        // Read in place: a queue with many messages in flight is not copied per pop.
        let fresh;
        let qs: &QueueState = match st.queues.get(&key) {
            Some(q) => q,
            None => {
                fresh = QueueState {
                    cursor: self.initial_cursor(&key),
                    ..Default::default()
                };
                &fresh
            }
        };
        if req.fifo && !qs.inflight.is_empty() {
            return Ok(None);
        }
        let seq = self.next_seq();
        let mut batch = Batch {
            req,
            now,
            seq,
            key: &key,
            broker: &self.cfg.broker_name,
            items: Vec::new(),
            delivered: Vec::new(),
            groups: Vec::new(),
            bytes_left,
        };
        let mut stopped = false;
        if req.fifo {
            for (off, attempts) in &qs.redeliver {
                if batch.delivered.len() >= need {
                    break;
                }
                if let Some(e) = cq.entry(*off)
                    && batch.take(&self.store, *off, &e, Some(attempts + 1)) == Pick::Stop
                {
                    stopped = true;
                    break;
                }
            }
        }
        let mut cursor = qs.cursor.max(cq.min_offset());
        if !stopped {
            let scan = (need * 4).max(64);
            for (off, e) in cq.entries_from(cursor, scan) {
                if batch.delivered.len() >= need {
                    break;
                }
                if qs.inflight.contains_key(&off) || !req.filter.may_match(e.tag_hash) {
                    cursor = off + 1;
                    continue;
                }
                match batch.take(&self.store, off, &e, None) {
                    Pick::Stop => break,
                    Pick::Skip | Pick::Taken => cursor = off + 1,
                }
            }
        }
        let Batch {
            items, delivered, ..
        } = batch;
        let unchanged = cursor == qs.cursor;
        if items.is_empty() && unchanged && !created {
            return Ok(None);
        }
        let record = PopRecord::Pop {
            key: key.clone(),
            cursor,
            pop_time: now,
            invisible: req.invisible_ms,
            seq,
            fifo: req.fifo,
            items,
        };
        let end = self.log(&mut st, Vec::new(), &[record])?;
        drop(st);
        for (m, mut props, handle, attempt) in delivered {
            let topic = original_topic(&m).unwrap_or_else(|| m.topic.clone());
            props.set(prop::POP_CK, handle.to_string());
            let mut nm = NewMessage::from_stored(&m, &topic, m.queue_id, props.encode());
            nm.reconsume_times = attempt as i32 - 1;
            let mut buf = BytesMut::with_capacity(message::record_len(&nm));
            message::encode_record_like(&nm, &m, &mut buf);
            out.messages.push(Popped {
                handle,
                attempt,
                record: buf.freeze(),
            });
        }
        out.rest += (cq.max_offset() - cursor).max(0);
        Ok(Some(end))
    }
}

/// What [`Batch::take`] did with a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// Delivered.
    Taken,
    /// Passed over (filtered out or unreadable); the cursor moves past it.
    Skip,
    /// FIFO: its message group is already in the batch; stop here.
    Stop,
}

/// The messages one pop takes from one queue.
struct Batch<'a> {
    req: &'a PopRequest,
    now: i64,
    seq: u64,
    key: &'a QueueKey,
    broker: &'a str,
    items: Vec<(i64, u32)>,
    delivered: Vec<(StoredMessage, Properties, ReceiptHandle, u32)>,
    /// FIFO: message groups in the batch. One message per group per batch (the queue then
    /// stays locked until the batch is acked), so a group's next message is never handed out
    /// while one is in flight.
    groups: Vec<String>,
    /// Bytes the response may still carry; a message that does not fit ends the batch
    /// (the first one is always taken).
    bytes_left: usize,
}

impl Batch<'_> {
    /// Considers the message at `off` (`attempt` is set for FIFO redeliveries).
    fn take(&mut self, store: &Store, off: i64, e: &CqEntry, attempt: Option<u32>) -> Pick {
        let Some((m, props)) = store
            .read_entry(e)
            .ok()
            .and_then(|rec| message::decode_record(&rec).ok())
            .and_then(|m| Properties::parse(&m.properties).ok().map(|p| (m, p)))
        else {
            return Pick::Skip;
        };
        if attempt.is_none()
            && self.req.filter.is_selective()
            && !self.req.filter.matches(props.tag())
        {
            return Pick::Skip;
        }
        let size = m.body.len() + m.properties.len() + 256;
        if !self.delivered.is_empty() && size > self.bytes_left {
            return Pick::Stop;
        }
        self.bytes_left = self.bytes_left.saturating_sub(size);
        if self.req.fifo {
            let g = props.get(prop::SHARDING_KEY).unwrap_or("");
            if self.groups.iter().any(|x| x == g) {
                return Pick::Stop;
            }
            self.groups.push(g.to_owned());
        }
        let attempt = attempt.unwrap_or(m.reconsume_times.max(0) as u32 + 1);
        let handle = ReceiptHandle {
            pop_time: self.now,
            invisible: self.req.invisible_ms,
            seq: self.seq,
            queue: self.key.queue,
            offset: off,
            broker: self.broker.to_owned(),
            topic: self.key.topic.clone(),
        };
        self.items.push((off, attempt));
        self.delivered.push((m, props, handle, attempt));
        Pick::Taken
    }
}
