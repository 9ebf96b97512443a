//! The store's threads: the flusher (write, fsync in SYNC mode, dispatch, publish
//! watermarks) and the syncer (ASYNC fsync, checkpoints, retention), and what they share.

use super::*;

/// The buffers of one write round, swapped with the append state's so rounds allocate
/// nothing. Whoever writes holds them: the flusher thread, or in ASYNC mode the appending task
/// itself when nobody else is writing ([`write_inline`]).
#[derive(Default)]
pub(super) struct WriteBuffers {
    batch: Vec<u8>,
    dispatch: Vec<Dispatch>,
    index_pending: Vec<(u64, u64)>,
    rolls: Vec<u64>,
    /// Log offset of `batch`.
    start: u64,
    /// `batch` is the flusher thread's to write (a failed inline write, or one that creates
    /// a segment: file creation and its directory fsync stay off the runtime threads).
    handoff: bool,
}

impl WriteBuffers {
    pub(super) fn new() -> Self {
        Self {
            batch: Vec::with_capacity(1 << 20),
            ..Self::default()
        }
    }
}

/// Moves everything pending into `w`; false if nothing was.
fn take_pending(sh: &Shared, w: &mut WriteBuffers) -> bool {
    let mut st = sh.state.lock().or_abort("store state");
    if st.pending.is_empty() {
        return false;
    }
    w.start = st.pending_start;
    st.pending_start = st.write_pos;
    std::mem::swap(&mut st.pending, &mut w.batch);
    std::mem::swap(&mut st.dispatch, &mut w.dispatch);
    std::mem::swap(&mut st.index_pending, &mut w.index_pending);
    std::mem::swap(&mut st.rolls, &mut w.rolls);
    true
}

/// After a successful write of `w.batch`: fsync in SYNC mode, dispatch to the consume queues
/// and the index, publish the watermarks, wake long polls.
fn finish_round(sh: &Shared, w: &mut WriteBuffers) {
    let (start, end) = (w.start, w.start + w.batch.len() as u64);
    if sh.cfg.flush == FlushMode::Sync {
        // A failed fsync may have dropped the dirty pages, so retrying proves nothing:
        // nothing from here on is acknowledged, and the broker needs a restart (recovery
        // re-reads what really is on disk).
        if let Err(e) = sync_log(sh, start, end) {
            fatal(sh, format!("fsync of the commit log failed: {e}"));
        }
    }
    for d in &w.dispatch {
        if let Err(e) = d.queue.push(d.queue_offset, d.entry) {
            tracing::error!(error = %e, "dispatch");
        }
    }
    if let Err(e) = sh.index.add_hashed(&w.index_pending) {
        tracing::error!(error = %e, "key index: cannot create the next file; keys of this round are not indexed");
    }
    w.index_pending.clear();
    w.batch.clear();
    w.rolls.clear();
    sh.written.advance(end);
    if sh.cfg.flush == FlushMode::Sync && !is_fatal(sh) {
        sh.durable.advance(end);
    } else if end - sh.durable.get() >= ASYNC_SYNC_BYTES {
        sh.sync_wake.notify_one();
    }
    // Wake the long polls of the queues that got entries, and only those.
    let mut last: Option<&Arc<ConsumeQueue>> = None;
    for d in &w.dispatch {
        if last.is_none_or(|l| !Arc::ptr_eq(l, &d.queue)) {
            d.queue.wake_polls();
            last = Some(&d.queue);
        }
    }
    w.dispatch.clear();
}

/// Rounds an appending task may write itself before it leaves the rest to the flusher.
const INLINE_ROUNDS: usize = 4;

/// ASYNC mode: the appending task writes what is pending itself (`pwrite` into the page cache,
/// no fsync), dispatches it and publishes the watermark, so a send is acknowledged without a
/// hand-off to the flusher thread and back. Returns false when it could not take the writer
/// (someone else is writing, or a batch awaits the flusher): the caller then wakes the
/// flusher. A failed write, or one that needs a new segment, is handed to the flusher.
pub(super) fn write_inline(sh: &Shared) -> bool {
    let mut w = match sh.writer.try_lock() {
        Ok(w) => w,
        Err(std::sync::TryLockError::WouldBlock) => return false,
        Err(std::sync::TryLockError::Poisoned(p)) => Err(p).or_abort("the store writer"),
    };
    if w.handoff {
        return false;
    }
    for _ in 0..INLINE_ROUNDS {
        if !take_pending(sh, &mut w) {
            return true;
        }
        if !w.rolls.is_empty() {
            hand_off(sh, &mut w, None);
            return true;
        }
        match write_batch(sh, w.start, &w.batch, &w.rolls) {
            Ok(()) => {
                finish_round(sh, &mut w);
                sh.rounds_inline
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                hand_off(sh, &mut w, Some(format!("commit log write failed: {e}")));
                return true;
            }
        }
    }
    false
}

/// Leaves `w`'s batch to the flusher thread (with the failure that refuses appends meanwhile).
fn hand_off(sh: &Shared, w: &mut WriteBuffers, failure: Option<String>) {
    w.handoff = true;
    {
        let mut st = sh.state.lock().or_abort("store state");
        if let Some(f) = failure {
            tracing::error!(error = %f, "inline commit log write failed; the flusher retries");
            st.failure = Some(f);
        }
        sh.handoff.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    sh.wake.notify_one();
}

/// The flusher: write, fsync in SYNC mode, dispatch, publish watermarks — for every append in
/// SYNC mode, and in ASYNC mode for what appending tasks left to it. Everything periodic
/// (ASYNC fsync, checkpoints, retention) runs in [`sync_loop`], so appends never wait for it.
pub(super) fn flush_loop(sh: Arc<Shared>) {
    let mut retry_delay = Duration::from_millis(10);
    loop {
        let shutdown = {
            let mut st = sh.state.lock().or_abort("store state");
            while st.pending.is_empty()
                && !st.shutdown
                && !sh.handoff.load(std::sync::atomic::Ordering::SeqCst)
            {
                st = sh.wake.wait(st).or_abort("store state");
            }
            st.shutdown
        };
        let mut w = sh.writer.lock().or_abort("the store writer");
        if !w.handoff {
            take_pending(&sh, &mut w);
        }
        if !w.batch.is_empty() {
            // Write, retrying while it fails (disk full): nothing here is acknowledged yet, and
            // new appends are refused until it succeeds.
            loop {
                match write_batch(&sh, w.start, &w.batch, &w.rolls) {
                    Ok(()) => {
                        let mut st = sh.state.lock().or_abort("store state");
                        if !st.fatal {
                            st.failure = None;
                        }
                        drop(st);
                        retry_delay = Duration::from_millis(10);
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "commit log write failed; retrying");
                        sh.state.lock().or_abort("store state").failure =
                            Some(format!("commit log write failed: {e}"));
                        std::thread::sleep(retry_delay);
                        retry_delay = (retry_delay * 2).min(Duration::from_secs(1));
                    }
                }
            }
            finish_round(&sh, &mut w);
            sh.rounds_flusher
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        w.handoff = false;
        sh.handoff.store(false, std::sync::atomic::Ordering::SeqCst);
        drop(w);
        if shutdown {
            // An appending task may be mid-write: the writer lock waits for it.
            let _w = sh.writer.lock().or_abort("the store writer");
            let st = sh.state.lock().or_abort("store state");
            if st.pending.is_empty() && !sh.handoff.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
        }
    }
}

/// Stops acknowledging for good: appends are refused and waiters time out.
pub(super) fn fatal(sh: &Shared, why: String) {
    tracing::error!(error = %why, "store stopped accepting writes; restart the broker to recover");
    let mut st = sh.state.lock().or_abort("store state");
    st.fatal = true;
    st.failure = Some(format!("{why}; restart the broker"));
}

pub(super) fn is_fatal(sh: &Shared) -> bool {
    sh.state.lock().or_abort("store state").fatal
}

/// How often the syncer checks that the store's files are still there.
const PRESENCE_CHECK: Duration = Duration::from_millis(250);

/// The syncer: fsync of written data every flush interval in ASYNC mode, checkpoints and
/// retention every checkpoint interval; a last sync and checkpoint once the flusher is done.
pub(super) fn sync_loop(sh: Arc<Shared>) {
    let mut last_sync = Instant::now();
    let mut last_checkpoint = Instant::now();
    let tick = match sh.cfg.flush {
        FlushMode::Async { interval } => interval.min(sh.cfg.checkpoint_interval),
        FlushMode::Sync => sh.cfg.checkpoint_interval,
    }
    .min(PRESENCE_CHECK);
    loop {
        // A store deleted under the broker would acknowledge sends into unlinked files, lost
        // at the next restart: stop acknowledging instead.
        if !is_fatal(&sh)
            && let Some(why) = sh.segments.vanished()
        {
            fatal(&sh, why);
        }
        {
            let st = sh.state.lock().or_abort("store state");
            if !sh.flusher_done.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = sh.sync_wake.wait_timeout(st, tick);
            }
        }
        let last = sh.flusher_done.load(std::sync::atomic::Ordering::SeqCst);
        // Index entries go to the page cache every tick, so at most a tick of them is held in
        // memory (the checkpoint makes them durable).
        if let Err(e) = sh.index.flush() {
            tracing::error!(error = %e, "key index write failed");
        }
        if let FlushMode::Async { interval } = sh.cfg.flush
            && (last_sync.elapsed() >= interval
                || last
                || sh.written.get() - sh.durable.get() >= ASYNC_SYNC_BYTES)
        {
            let written = sh.written.get();
            let durable = sh.durable.get();
            if written > durable {
                match sync_log(&sh, durable, written) {
                    Ok(()) if !is_fatal(&sh) => sh.durable.advance(written),
                    Ok(()) => {}
                    Err(e) => fatal(&sh, format!("fsync of the commit log failed: {e}")),
                }
            }
            last_sync = Instant::now();
        }
        if last_checkpoint.elapsed() >= sh.cfg.checkpoint_interval || last {
            if let Err(e) = checkpoint_now(&sh) {
                tracing::error!(error = %e, "checkpoint failed");
            }
            // The second's buffers (queue tails, index entries, write batches) were freed:
            // hand their pages back, so resident memory follows what is live.
            rdmq_transport::heap::release_free_memory();
            if let Err(e) = retention::enforce_shared(&sh) {
                tracing::error!(error = %e, "retention failed");
            }
            last_checkpoint = Instant::now();
        }
        if last {
            return;
        }
    }
}

/// Writes a batch starting at `start`, one write per segment it covers (`rolls` are the
/// segments the batch starts).
pub(super) fn write_batch(sh: &Shared, start: u64, batch: &[u8], rolls: &[u64]) -> io::Result<()> {
    let end = start + batch.len() as u64;
    let mut pos = start;
    while pos < end {
        let next = rolls
            .iter()
            .copied()
            .filter(|r| *r > pos && *r < end)
            .min()
            .unwrap_or(end);
        let base = if rolls.contains(&pos) {
            pos
        } else {
            sh.segments
                .segment_of(pos)
                .map(|(b, _)| b)
                .ok_or_else(|| io::Error::other(format!("no segment for offset {pos}")))?
        };
        let chunk = &batch[(pos - start) as usize..(next - start) as usize];
        sh.segments.write_at(base, pos, chunk)?;
        pos = next;
    }
    Ok(())
}

/// fdatasync of every segment holding bytes in `from..to`.
pub(super) fn sync_log(sh: &Shared, from: u64, to: u64) -> io::Result<()> {
    let bases = sh.segments.bases();
    for (i, base) in bases.iter().enumerate() {
        let seg_end = bases.get(i + 1).copied().unwrap_or(u64::MAX);
        if *base <= to && seg_end > from {
            sh.segments.sync(*base)?;
        }
    }
    Ok(())
}

/// Files past which a checkpoint makes consume queues durable with one `syncfs` instead of an
/// fsync per file.
const SYNCFS_ABOVE: usize = 64;

/// Makes consume queues, index, offsets and the log durable up to what is written, then
/// records that point as the checkpoint. Only queues that got entries are written.
pub(super) fn checkpoint_now(sh: &Shared) -> io::Result<()> {
    let written = sh.written.get();
    sync_log(sh, sh.durable.get().min(written), written)?;
    sh.queues.flush()?;
    sh.queues.sync(SYNCFS_ABOVE)?;
    sh.index.flush()?;
    sh.index.sync()?;
    if sh
        .offsets_dirty
        .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        let offsets = sh.offsets.lock().or_abort("store state").clone();
        if let Err(e) = meta::save_json(&sh.cfg.dir, OFFSETS, &offsets) {
            sh.offsets_dirty
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(e);
        }
    }
    let cp = Checkpoint { offset: written };
    let mut last = sh.last_checkpoint.lock().or_abort("store state");
    if *last != cp {
        meta::save_json(&sh.cfg.dir, CHECKPOINT, &cp)?;
        *last = cp;
    }
    Ok(())
}
