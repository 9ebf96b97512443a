//! Opening the store: loading consume queues and the index up to the last checkpoint, scanning
//! the commit log from there with CRCs verified, cutting a torn or corrupt tail, and
//! dispatching the records after the checkpoint again.

use super::*;

/// A frame's dispatch facts, read back from a record during recovery.
pub(super) fn recovered_of(frame: &log::Frame) -> Option<Recovered> {
    let m = message::decode_record(&frame.record).ok()?;
    let mut key_hashes = Vec::new();
    let tag_hash = index_facts(&m.properties, &mut key_hashes).ok()?;
    Some(Recovered {
        entry: CqEntry {
            phys: frame.offset,
            size: frame.record.len() as u32,
            tag_hash,
        },
        key_hashes,
        topic: m.topic,
        queue_id: m.queue_id,
        queue_offset: m.queue_offset,
    })
}

/// Validates `properties` without allocating; returns the tag hash and pushes the index key
/// hashes (each of `KEYS`, and the client message id `UNIQ_KEY`). Offset message ids are not
/// indexed: they name their offset.
pub(super) fn index_facts(
    properties: &str,
    key_hashes: &mut Vec<u64>,
) -> Result<i64, PropertiesError> {
    let mut tag_hash = 0;
    message::scan_properties(properties, |k, v| match k {
        message::prop::TAGS if !v.is_empty() => tag_hash = message::tag_hash(Some(v)),
        message::prop::KEYS => {
            key_hashes.extend(v.split(' ').filter(|k| !k.is_empty()).map(index::key_hash))
        }
        message::prop::UNIQ_KEY => key_hashes.push(index::key_hash(v)),
        _ => {}
    })?;
    Ok(tag_hash)
}

impl Store {
    /// Opens (creating or recovering) the store.
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&cfg.dir)?;
        let checkpoint: Checkpoint = meta::load_json(&cfg.dir, CHECKPOINT)?.unwrap_or_default();
        let topics: Vec<TopicConfig> = meta::load_json(&cfg.dir, TOPICS)?.unwrap_or_default();
        let offsets: Offsets = meta::load_json(&cfg.dir, OFFSETS)?.unwrap_or_default();
        let segments = Segments::open(
            &cfg.dir.join("commitlog"),
            cfg.segment_size,
            cfg.min_free_bytes,
        )?;
        let queues = Queues::open(&cfg.dir.join("consumequeue"), checkpoint.offset)?;
        let index = KeyIndex::open(&cfg.dir.join("index"), checkpoint.offset)?;
        let started = Instant::now();
        let mut recovered = 0u64;
        let mut gaps = Vec::new();
        let end = segments.scan(checkpoint.offset, |frame| {
            let Some(d) = recovered_of(&frame) else {
                gaps.push(frame.offset);
                return;
            };
            match queues.get_or_create(&d.topic, d.queue_id) {
                Ok(q) => {
                    if let Err(e) = q.push(d.queue_offset, d.entry) {
                        gaps.push(frame.offset);
                        tracing::error!(error = %e, "recovery");
                    }
                }
                Err(e) => tracing::error!(error = %e, "recovery: cannot open consume queue"),
            }
            let keys: Vec<(u64, u64)> = d.key_hashes.iter().map(|h| (*h, frame.offset)).collect();
            if let Err(e) = index.add_hashed(&keys) {
                tracing::error!(error = %e, "recovery: cannot index keys");
            }
            recovered += 1;
        })?;
        if !gaps.is_empty() {
            tracing::error!(
                count = gaps.len(),
                "records that could not be dispatched during recovery"
            );
        }
        let log_start = segments.bases().first().copied().unwrap_or(0);
        for (_, cq) in queues.all() {
            cq.trim_below_phys(log_start)?;
            cq.reset_assigned();
        }
        if segments.bases().is_empty() {
            segments.create(end.end)?;
        }
        if let Some(active) = segments.bases().last() {
            segments.preallocate(*active)?;
        }
        let (segment_base, segment_end) = match segments.segment_of(end.end) {
            Some((base, _)) => (base, base + cfg.segment_size),
            None => (end.end, end.end + cfg.segment_size),
        };
        tracing::info!(
            dir = %cfg.dir.display(),
            from = checkpoint.offset,
            to = end.end,
            records = recovered,
            truncated = end.truncated,
            took_ms = started.elapsed().as_millis() as u64,
            "store recovered"
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(AppendState {
                write_pos: end.end,
                pending: Vec::with_capacity(1 << 20),
                pending_start: end.end,
                dispatch: Vec::new(),
                index_pending: Vec::new(),
                rolls: Vec::new(),
                segment_end,
                segment_base,
                space_checked_pos: end.end,
                space_checked_at: Instant::now(),
                space_refusal: super::space_refusal(&cfg),
                failure: None,
                fatal: false,
                shutdown: false,
            }),
            wake: Condvar::new(),
            writer: Mutex::new(super::flush::WriteBuffers::new()),
            handoff: Default::default(),
            rounds_inline: Default::default(),
            rounds_flusher: Default::default(),
            sync_wake: Condvar::new(),
            flusher_done: Default::default(),
            segments,
            queues,
            index,
            written: Watermark::new(end.end),
            durable: Watermark::new(end.end),
            topics: std::sync::RwLock::new(
                topics.into_iter().map(|t| (t.name.clone(), t)).collect(),
            ),
            topics_gate: Default::default(),
            offsets: Mutex::new(offsets),
            offsets_dirty: Default::default(),
            poll_wakeups: Default::default(),
            last_checkpoint: Mutex::new(Checkpoint { offset: u64::MAX }),
            cfg,
        });
        // Make the recovered state the new checkpoint before accepting writes.
        checkpoint_now(&shared)?;
        let s2 = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("rdmq-store-flush".into())
            .spawn(move || flush_loop(s2))?;
        let s3 = shared.clone();
        let syncer = std::thread::Builder::new()
            .name("rdmq-store-sync".into())
            .spawn(move || sync_loop(s3))?;
        Ok(Store {
            shared,
            threads: Arc::new(Mutex::new(Some(StoreThreads { flusher, syncer }))),
        })
    }
}
