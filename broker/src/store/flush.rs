//! The store's threads: the flusher (write, fsync in SYNC mode, dispatch, publish
//! watermarks) and the syncer (ASYNC fsync, checkpoints, retention), and what they share.

use super::*;

/// The flusher: write, fsync in SYNC mode, dispatch, publish watermarks. Everything periodic
/// (ASYNC fsync, checkpoints, retention) runs in [`sync_loop`], so appends never wait for it.
pub(super) fn flush_loop(sh: Arc<Shared>) {
    let mut retry_delay = Duration::from_millis(10);
    // Buffers swapped with the append state's, so batches allocate nothing.
    let mut batch: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut dispatch: Vec<Dispatch> = Vec::new();
    let mut index_pending: Vec<(u64, u64)> = Vec::new();
    let mut rolls: Vec<u64> = Vec::new();
    loop {
        let (start, shutdown) = {
            let mut st = sh.state.lock().or_abort("store state");
            while st.pending.is_empty() && !st.shutdown {
                st = sh.wake.wait(st).or_abort("store state");
            }
            let start = st.pending_start;
            st.pending_start = st.write_pos;
            std::mem::swap(&mut st.pending, &mut batch);
            std::mem::swap(&mut st.dispatch, &mut dispatch);
            std::mem::swap(&mut st.index_pending, &mut index_pending);
            std::mem::swap(&mut st.rolls, &mut rolls);
            (start, st.shutdown)
        };
        if !batch.is_empty() {
            // Write, retrying while it fails (disk full): nothing here is acknowledged yet, and
            // new appends are refused until it succeeds.
            loop {
                match write_batch(&sh, start, &batch, &rolls) {
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
            let end = start + batch.len() as u64;
            if sh.cfg.flush == FlushMode::Sync {
                // A failed fsync may have dropped the dirty pages, so retrying proves nothing:
                // nothing from here on is acknowledged, and the broker needs a restart (recovery
                // re-reads what really is on disk).
                if let Err(e) = sync_log(&sh, start, end) {
                    fatal(&sh, format!("fsync of the commit log failed: {e}"));
                }
            }
            for d in dispatch.drain(..) {
                if let Err(e) = d.queue.push(d.queue_offset, d.entry) {
                    tracing::error!(error = %e, "dispatch");
                }
            }
            sh.index.add_hashed(&index_pending);
            index_pending.clear();
            batch.clear();
            rolls.clear();
            sh.written.advance(end);
            if sh.cfg.flush == FlushMode::Sync && !is_fatal(&sh) {
                sh.durable.advance(end);
            } else if end - sh.durable.get() >= ASYNC_SYNC_BYTES {
                sh.sync_wake.notify_one();
            }
            sh.arrivals.send_modify(|v| *v += 1);
        }
        if shutdown {
            let st = sh.state.lock().or_abort("store state");
            if st.pending.is_empty() {
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

/// The syncer: fsync of written data every flush interval in ASYNC mode, checkpoints and
/// retention every checkpoint interval; a last sync and checkpoint once the flusher is done.
pub(super) fn sync_loop(sh: Arc<Shared>) {
    let mut last_sync = Instant::now();
    let mut last_checkpoint = Instant::now();
    let tick = match sh.cfg.flush {
        FlushMode::Async { interval } => interval.min(sh.cfg.checkpoint_interval),
        FlushMode::Sync => sh.cfg.checkpoint_interval,
    };
    loop {
        {
            let st = sh.state.lock().or_abort("store state");
            if !sh.flusher_done.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = sh.sync_wake.wait_timeout(st, tick);
            }
        }
        let last = sh.flusher_done.load(std::sync::atomic::Ordering::SeqCst);
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

/// Makes consume queues, index, offsets and the log durable up to what is written, then
/// records that point as the checkpoint.
pub(super) fn checkpoint_now(sh: &Shared) -> io::Result<()> {
    let written = sh.written.get();
    sync_log(sh, sh.log_start_of(), written)?;
    for (_, q) in sh.queues.all() {
        q.flush()?;
        q.sync()?;
    }
    sh.index.flush()?;
    sh.index.sync()?;
    if sh
        .offsets_dirty
        .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        let offsets = sh.offsets.lock().or_abort("store state").clone();
        meta::save_json(&sh.cfg.dir, OFFSETS, &offsets)?;
    }
    meta::save_json(&sh.cfg.dir, CHECKPOINT, &Checkpoint { offset: written })
}
