//! The message store on real files: appends and reads, SYNC and ASYNC acknowledgement,
//! recovery from the checkpoint with CRC checks, torn and corrupt tails, segment rolls,
//! retention, the key index, time search and a full disk.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdmq_broker::message::{self, HostAddr, NewMessage};
use rdmq_broker::store::meta::TopicConfig;
use rdmq_broker::store::{FlushMode, RetentionConfig, Store, StoreConfig, StoreError};

mod common;

fn tmp() -> common::TempDir {
    common::TempDir::new()
}

fn cfg(dir: &Path, flush: FlushMode) -> StoreConfig {
    StoreConfig {
        flush,
        min_free_bytes: 0,
        // Segments are preallocated: keep the tests' disk use small.
        segment_size: 64 << 20,
        ..StoreConfig::new(dir)
    }
}

fn msg(topic: &str, queue: i32, i: usize, len: usize) -> NewMessage {
    NewMessage {
        topic: topic.into(),
        queue_id: queue,
        flag: 0,
        sys_flag: 0,
        born_timestamp: 1,
        born_host: HostAddr::parse("10.1.2.3:4567"),
        reconsume_times: 0,
        properties: format!(
            "TAGS\u{1}t{}\u{2}KEYS\u{1}k{i} shared\u{2}UNIQ_KEY\u{1}ID{i:08}\u{2}",
            i % 2
        ),
        body: Bytes::from((0..len).map(|j| (i * 7 + j) as u8).collect::<Vec<_>>()),
    }
}

fn read_all(store: &Store, topic: &str, queue: i32) -> Vec<message::StoredMessage> {
    let (min, max) = store.offsets(topic, queue);
    let q = store.queue(topic, queue);
    let Some(q) = q else { return Vec::new() };
    q.entries_from(min, (max - min) as usize)
        .into_iter()
        .map(|(_, e)| message::decode_record(&store.read_entry(&e).unwrap()).unwrap())
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sync_and_async_appends_read_back_identical() {
    for flush in [
        FlushMode::Sync,
        FlushMode::Async {
            interval: Duration::from_millis(50),
        },
    ] {
        let dir = tmp();
        let store = Store::open(cfg(dir.path(), flush)).unwrap();
        store.put_topic(TopicConfig::new("T", 2)).unwrap();
        let msgs: Vec<_> = (0..50)
            .map(|i| msg("T", (i % 2) as i32, i, 100 + i))
            .collect();
        let placed = rt().block_on(store.put(&msgs)).unwrap();
        assert_eq!(
            placed
                .iter()
                .filter(|p| p.queue_id == 0)
                .map(|p| p.queue_offset)
                .collect::<Vec<_>>(),
            (0..25).collect::<Vec<_>>()
        );
        let got = read_all(&store, "T", 1);
        assert_eq!(got.len(), 25);
        for (k, m) in got.iter().enumerate() {
            let i = 2 * k + 1;
            assert_eq!(m.body, msgs[i].body);
            assert_eq!(m.properties, msgs[i].properties);
            assert_eq!(m.queue_offset, k as i64);
            assert_eq!(m.physical_offset as u64, placed[i].phys);
        }
        store.shutdown();
    }
}

#[test]
fn async_sends_are_written_by_their_own_task_and_sync_sends_by_the_flusher() {
    for (flush, inline) in [
        (
            FlushMode::Async {
                interval: Duration::from_millis(50),
            },
            true,
        ),
        (FlushMode::Sync, false),
    ] {
        let dir = tmp();
        let store = Store::open(cfg(dir.path(), flush)).unwrap();
        store.put_topic(TopicConfig::new("T", 1)).unwrap();
        // A first append creates the segment file: that round is the flusher's.
        rt().block_on(store.put(&[msg("T", 0, 0, 10)])).unwrap();
        let before = store.write_rounds();
        for i in 1..=100 {
            rt().block_on(store.put(&[msg("T", 0, i, 100)])).unwrap();
        }
        let (by_task, by_flusher) = store.write_rounds();
        let (by_task, by_flusher) = (by_task - before.0, by_flusher - before.1);
        if inline {
            assert_eq!((by_task, by_flusher), (100, 0), "{flush:?}");
        } else {
            assert_eq!(by_task, 0, "{flush:?}");
            assert!(by_flusher >= 1, "{flush:?}");
        }
        assert_eq!(read_all(&store, "T", 0).len(), 101);
        store.shutdown();
    }
}

#[test]
fn reopening_recovers_everything_and_continues_offsets() {
    let dir = tmp();
    {
        let store = Store::open(cfg(dir.path(), FlushMode::Sync)).unwrap();
        store.put_topic(TopicConfig::new("T", 1)).unwrap();
        rt().block_on(store.put(&(0..20).map(|i| msg("T", 0, i, 64)).collect::<Vec<_>>()))
            .unwrap();
        store.commit_offset("G", "T", 0, 7);
        store.shutdown();
    }
    let store = Store::open(cfg(dir.path(), FlushMode::Sync)).unwrap();
    assert_eq!(store.offsets("T", 0), (0, 20));
    assert_eq!(store.committed_offset("G", "T", 0), Some(7));
    let placed = rt().block_on(store.put(&[msg("T", 0, 20, 64)])).unwrap();
    assert_eq!(placed[0].queue_offset, 20);
    assert_eq!(read_all(&store, "T", 0).len(), 21);
    store.shutdown();
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn rewind_checkpoint(dir: &Path) {
    std::fs::write(dir.join("checkpoint.json"), br#"{"offset":0}"#).unwrap();
}

#[test]
fn a_torn_tail_is_cut_and_nothing_half_written_is_exposed() {
    let dir = tmp();
    let placed = {
        let store = Store::open(cfg(dir.path(), FlushMode::Sync)).unwrap();
        store.put_topic(TopicConfig::new("T", 1)).unwrap();
        let p = rt()
            .block_on(store.put(&(0..10).map(|i| msg("T", 0, i, 300)).collect::<Vec<_>>()))
            .unwrap();
        store.shutdown();
        p
    };
    // A crash in the middle of the next write: half a frame right after the last one (the
    // segment is preallocated, so that is inside the file).
    let seg = segment_files(dir.path()).pop().unwrap();
    let torn = [0, 0, 1, 0, 0xAB, 0xCD, 0xEF, 0x01, 1, 2, 3];
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&torn, placed[9].end).unwrap();
    drop(f);
    rewind_checkpoint(dir.path());
    let store = Store::open(cfg(dir.path(), FlushMode::Sync)).unwrap();
    assert_eq!(store.offsets("T", 0), (0, 10));
    // The torn bytes are gone: everything after the last whole frame reads as zeros.
    let mut after = [0xFFu8; 11];
    std::fs::File::open(&seg)
        .unwrap()
        .read_exact_at(&mut after, placed[9].end)
        .unwrap();
    assert_eq!(after, [0u8; 11]);
    let p = rt().block_on(store.put(&[msg("T", 0, 10, 10)])).unwrap();
    assert_eq!(p[0].queue_offset, 10);
    assert_eq!(read_all(&store, "T", 0).len(), 11);
    store.shutdown();
}

#[test]
fn a_corrupt_frame_cuts_the_log_there() {
    let dir = tmp();
    let placed = {
        let store = Store::open(cfg(dir.path(), FlushMode::Sync)).unwrap();
        store.put_topic(TopicConfig::new("T", 1)).unwrap();
        let p = rt()
            .block_on(store.put(&(0..10).map(|i| msg("T", 0, i, 100)).collect::<Vec<_>>()))
            .unwrap();
        store.shutdown();
        p
    };
    // Flip one body byte of message 6 (as a bad sector would).
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = placed[6].phys as usize + 8 + 90;
    bytes[at] ^= 0xFF;
    std::fs::write(&seg, bytes).unwrap();
    rewind_checkpoint(dir.path());
    let store = Store::open(cfg(dir.path(), FlushMode::Sync)).unwrap();
    assert_eq!(
        store.offsets("T", 0),
        (0, 6),
        "messages 6.. are gone, 0..6 intact"
    );
    for (i, m) in read_all(&store, "T", 0).iter().enumerate() {
        assert_eq!(m.body, msg("T", 0, i, 100).body);
    }
    store.shutdown();
}

#[test]
fn segments_roll_and_everything_survives_a_restart() {
    let dir = tmp();
    let small = |d: &Path| StoreConfig {
        segment_size: 4096,
        ..cfg(
            d,
            FlushMode::Async {
                interval: Duration::from_millis(20),
            },
        )
    };
    {
        let store = Store::open(small(dir.path())).unwrap();
        store.put_topic(TopicConfig::new("T", 3)).unwrap();
        let r = rt();
        for chunk in 0..10 {
            let msgs: Vec<_> = (0..30)
                .map(|i| msg("T", (i % 3) as i32, chunk * 30 + i, 200))
                .collect();
            r.block_on(store.put(&msgs)).unwrap();
        }
        store.shutdown();
    }
    assert!(segment_files(dir.path()).len() > 10);
    rewind_checkpoint(dir.path());
    let store = Store::open(small(dir.path())).unwrap();
    for q in 0..3 {
        let got = read_all(&store, "T", q);
        assert_eq!(got.len(), 100);
        for m in &got {
            let i = m.queue_offset as usize * 3 + q as usize;
            assert_eq!(m.body, msg("T", q, i, 200).body);
        }
    }
    store.shutdown();
}

#[test]
fn retention_deletes_whole_old_segments_and_moves_first_offsets() {
    let dir = tmp();
    let c = StoreConfig {
        segment_size: 4096,
        retention: RetentionConfig {
            max_age: None,
            max_bytes: Some(16 * 1024),
        },
        ..cfg(dir.path(), FlushMode::Sync)
    };
    let store = Store::open(c).unwrap();
    store.put_topic(TopicConfig::new("T", 1)).unwrap();
    rt().block_on(store.put(&(0..200).map(|i| msg("T", 0, i, 200)).collect::<Vec<_>>()))
        .unwrap();
    let deleted = store.enforce_retention().unwrap();
    assert!(deleted > 0);
    let (min, max) = store.offsets("T", 0);
    assert!(min > 0 && max == 200, "{min}..{max}");
    assert!(segment_files(dir.path()).len() <= 5);
    // What is left reads back; the index forgot what was deleted.
    assert_eq!(read_all(&store, "T", 0).len() as i64, max - min);
    assert!(store.lookup("ID00000000").is_empty());
    assert_eq!(store.lookup("ID00000199").len(), 1);
    store.shutdown();
}

#[test]
fn per_topic_size_limits_trim_only_that_topic() {
    let dir = tmp();
    let store = Store::open(cfg(dir.path(), FlushMode::Sync)).unwrap();
    store
        .put_topic(TopicConfig {
            retention_bytes: Some(2000),
            ..TopicConfig::new("Small", 1)
        })
        .unwrap();
    store.put_topic(TopicConfig::new("Big", 1)).unwrap();
    let msgs: Vec<_> = (0..20)
        .flat_map(|i| [msg("Small", 0, i, 200), msg("Big", 0, i, 200)])
        .collect();
    rt().block_on(store.put(&msgs)).unwrap();
    store.enforce_retention().unwrap();
    let (min, max) = store.offsets("Small", 0);
    assert!(min > 0 && max == 20 && max - min <= 7, "{min}..{max}");
    assert_eq!(store.offsets("Big", 0), (0, 20));
    store.shutdown();
}

#[test]
fn keys_ids_and_timestamps_find_messages() {
    let dir = tmp();
    let store = Store::open(cfg(dir.path(), FlushMode::Sync)).unwrap();
    store.put_topic(TopicConfig::new("T", 1)).unwrap();
    let r = rt();
    r.block_on(store.put(&(0..5).map(|i| msg("T", 0, i, 10)).collect::<Vec<_>>()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let t = rdmq_broker::store::now_ms();
    std::thread::sleep(Duration::from_millis(20));
    let placed = r
        .block_on(store.put(&(5..10).map(|i| msg("T", 0, i, 10)).collect::<Vec<_>>()))
        .unwrap();
    assert_eq!(store.search_offset_by_time("T", 0, t).unwrap(), 5);
    assert_eq!(store.search_offset_by_time("T", 0, 0).unwrap(), 0);
    assert_eq!(store.search_offset_by_time("T", 0, i64::MAX).unwrap(), 10);
    assert_eq!(store.lookup("k7"), vec![placed[2].phys]);
    assert_eq!(store.lookup("shared").len(), 10);
    let id = message::offset_msg_id(HostAddr::parse("127.0.0.1:10911"), placed[0].phys as i64);
    assert_eq!(store.lookup(&id), vec![placed[0].phys]);
    let rec = store.read_frame(placed[0].phys).unwrap();
    assert_eq!(message::decode_record(&rec).unwrap().queue_offset, 5);
    // An offset inside a frame is refused, not misread.
    assert!(store.read_frame(placed[0].phys + 3).is_err());
    store.shutdown();
}

#[test]
fn bad_input_and_a_full_disk_are_typed_errors() {
    let dir = tmp();
    let c = StoreConfig {
        max_log_bytes: Some(3000),
        max_body: 1000,
        ..cfg(dir.path(), FlushMode::Sync)
    };
    let store = Store::open(c).unwrap();
    store.put_topic(TopicConfig::new("T", 2)).unwrap();
    let r = rt();
    assert!(matches!(
        r.block_on(store.put(&[msg("Nope", 0, 0, 1)])),
        Err(StoreError::TopicNotFound(_))
    ));
    assert!(matches!(
        r.block_on(store.put(&[msg("T", 2, 0, 1)])),
        Err(StoreError::QueueNotFound { queues: 2, .. })
    ));
    assert!(matches!(
        r.block_on(store.put(&[msg("T", 0, 0, 1001)])),
        Err(StoreError::Illegal(_))
    ));
    let mut bad = msg("T", 0, 0, 1);
    bad.properties = "TAGS".into();
    assert!(matches!(
        r.block_on(store.put(&[bad])),
        Err(StoreError::Illegal(_))
    ));
    assert!(store.put_topic(TopicConfig::new("bad name!", 1)).is_err());
    for i in 0..10 {
        let _ = r.block_on(store.put(&[msg("T", 0, i, 900)]));
    }
    match r.block_on(store.put(&[msg("T", 0, 99, 900)])) {
        Err(StoreError::Busy(why)) => assert!(why.contains("disk full"), "{why}"),
        other => panic!("{other:?}"),
    }
    // What was stored before the disk filled is intact.
    assert!(read_all(&store, "T", 0).iter().all(|m| m.body.len() == 900));
    store.shutdown();
}

fn segment_lengths(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect()
}

#[test]
fn a_segment_is_not_preallocated_when_that_would_leave_too_little_free_space() {
    // Preallocation is an optimisation: a store whose disk cannot spare a whole segment opens
    // with the segment unreserved, and the free-space check answers appends.
    let dir = tmp();
    let c = StoreConfig {
        min_free_bytes: u64::MAX / 4,
        ..cfg(dir.path(), FlushMode::Sync)
    };
    let store = Store::open(c).unwrap();
    assert_eq!(segment_lengths(dir.path()), vec![0]);
    store.put_topic(TopicConfig::new("T", 1)).unwrap();
    match rt().block_on(store.put(&[msg("T", 0, 0, 10)])) {
        Err(StoreError::Busy(why)) => assert!(why.contains("disk full"), "{why}"),
        other => panic!("{other:?}"),
    }
    store.shutdown();
    // With room to spare the same segment is reserved on the next open.
    let store = Store::open(cfg(dir.path(), FlushMode::Sync)).unwrap();
    assert_eq!(segment_lengths(dir.path()), vec![64 << 20]);
    store.shutdown();
}

/// A tmpfs of `bytes` mounted on a fresh directory, unmounted on drop; `None` where this
/// process may not mount (not root, or no CAP_SYS_ADMIN).
struct SmallDisk(common::TempDir);

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tmp();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_disk_smaller_than_a_segment_opens_fills_and_keeps_what_it_acknowledged() {
    let Some(disk) = SmallDisk::mount(16 << 20) else {
        eprintln!("skipped: this process cannot mount a tmpfs (needs root)");
        return;
    };
    let store_dir = disk.0.path().join("store");
    // A 64 MiB segment on a 16 MiB disk: the reservation cannot be made, the store still
    // opens. The free-space bound exceeds what is written between two checks (4 MiB), so the
    // store refuses before the file system does.
    let c = StoreConfig {
        min_free_bytes: 6 << 20,
        ..cfg(&store_dir, FlushMode::Sync)
    };
    let store = Store::open(c.clone()).unwrap();
    assert!(segment_lengths(&store_dir).iter().all(|len| *len < 1 << 20));
    store.put_topic(TopicConfig::new("T", 1)).unwrap();
    let r = rt();
    let mut acked = 0;
    let refusal = loop {
        match r.block_on(store.put(&[msg("T", 0, acked, 64 << 10)])) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 256, "a 16 MiB disk took {acked} 64 KiB messages");
    };
    assert!(
        matches!(&refusal, StoreError::Busy(why) if why.contains("disk full")),
        "{refusal:?}"
    );
    assert!(
        acked >= 50,
        "only {acked} messages fitted before the refusal"
    );
    store.shutdown();
    drop(store);
    // Everything acknowledged is there after a restart on the same full disk.
    let store = Store::open(c).unwrap();
    let got = read_all(&store, "T", 0);
    assert_eq!(got.len(), acked);
    assert!(got.iter().all(|m| m.body.len() == 64 << 10));
    store.shutdown();
}

#[test]
fn a_roll_leaving_less_than_a_header_of_slack_is_not_mistaken_for_a_tear() {
    // Preallocated segments end in zero fill; when a roll leaves fewer bytes than a frame
    // header at the end of a segment, recovery must see the clean end, not a torn frame.
    for slack in 1..=8u64 {
        let dir = tmp();
        let segment = 4096u64;
        let c = StoreConfig {
            segment_size: segment,
            ..cfg(dir.path(), FlushMode::Sync)
        };
        let store = Store::open(c.clone()).unwrap();
        store.put_topic(TopicConfig::new("T", 1)).unwrap();
        let overhead = 8 + message::record_len(&msg("T", 0, 0, 0)) as u64;
        let first = msg("T", 0, 0, (segment - slack - overhead) as usize);
        let placed = rt()
            .block_on(store.put(&[first, msg("T", 0, 1, 100), msg("T", 0, 2, 100)]))
            .unwrap();
        assert_eq!(placed[0].end, segment - slack);
        assert_eq!(
            placed[1].phys,
            segment - slack,
            "second message rolled to a new segment"
        );
        store.shutdown();
        rewind_checkpoint(dir.path());
        let store = Store::open(c).unwrap();
        assert_eq!(
            store.offsets("T", 0),
            (0, 3),
            "slack {slack}: messages lost in recovery"
        );
        assert_eq!(read_all(&store, "T", 0).len(), 3);
        store.shutdown();
    }
}

#[test]
fn a_store_deleted_under_the_broker_stops_acknowledging_within_a_second() {
    let r = rt();
    for flush in [
        FlushMode::Sync,
        FlushMode::Async {
            interval: Duration::from_millis(500),
        },
    ] {
        let dir = tmp();
        let store = Store::open(cfg(dir.path(), flush)).unwrap();
        store.put_topic(TopicConfig::new("T", 1)).unwrap();
        r.block_on(store.put(&[msg("T", 0, 0, 10)])).unwrap();
        std::fs::remove_dir_all(dir.path()).unwrap();
        let deleted = Instant::now();
        let mut i = 1;
        loop {
            match r.block_on(store.put(&[msg("T", 0, i, 10)])) {
                Ok(_) => assert!(
                    deleted.elapsed() < Duration::from_secs(1),
                    "{flush:?}: still acknowledging {:?} after the deletion",
                    deleted.elapsed()
                ),
                Err(StoreError::Busy(why)) => {
                    assert!(why.contains("commit log"), "{why}");
                    break;
                }
                Err(other) => panic!("{flush:?}: {other:?}"),
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        store.shutdown();
    }
}
