//! Integration tests of session recording against real files.
//!
//! Each test works in its own directory under the system temp dir (removed at
//! the end) and bounds its own run time with `within`. Tests that call
//! process-wide functions (`flush_all_recorders`), or that another test's
//! `flush_all_recorders` would disturb (an error it would consume, a writer
//! it would wait on), hold `PROCESS_WIDE`.

mod support;

use support::TempDir;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zen_websocket::recorder::{
    self, flush_all_recorders, Direction, Entry, EntryKind, OpenMode, Overflow, Recorder,
    RecorderConfig, Recording,
};
use zen_websocket::{Error, ErrorCategory};

static PROCESS_WIDE: Mutex<()> = Mutex::new(());

fn process_wide() -> MutexGuard<'static, ()> {
    PROCESS_WIDE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on its own thread and fails the test if it takes longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            worker.join().unwrap();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test did not finish within {limit:?}"),
    }
}

const LIMIT: Duration = Duration::from_secs(60);

/// Every entry of the file; fails on any bad line.
fn entries(path: &Path) -> Vec<Entry> {
    Recording::open(path)
        .unwrap()
        .map(|r| r.unwrap_or_else(|bad| panic!("{}: {bad}", path.display())))
        .collect()
}

fn texts(path: &Path) -> Vec<String> {
    entries(path)
        .into_iter()
        .map(|e| match e.kind {
            EntryKind::Text(t) => t,
            other => panic!("not text: {other:?}"),
        })
        .collect()
}

/// Entries that decode, for polling a file the writer may be appending to.
fn complete_entries(path: &Path) -> usize {
    Recording::open(path).map_or(0, |r| r.filter(Result::is_ok).count())
}

fn config() -> RecorderConfig {
    let mut c = RecorderConfig::default();
    c.flush_timeout = Duration::from_secs(20);
    c
}

/// A config under which nothing is written before an explicit flush.
fn hold_everything() -> RecorderConfig {
    let mut c = config();
    c.batch_size = 1_000_000;
    c.flush_interval = Duration::from_secs(3600);
    c
}

/// Waits for `cond`, polling, up to `limit`; a bounded wait, not a sleep to synchronize.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// Runs `body(t)` for every `t` in `0..threads`, each on a thread of its own,
/// and returns when all are done (a panic in one fails the test).
fn on_threads(threads: u64, body: impl Fn(u64) + Sync) {
    thread::scope(|s| {
        for t in 0..threads {
            let body = &body;
            s.spawn(move || body(t));
        }
    });
}

#[test]
fn many_threads_recording_into_several_files_write_every_entry_exactly_once() {
    within(LIMIT, || {
        let dir = TempDir::new("many");
        let mut c = config();
        c.batch_size = 16;
        c.flush_interval = Duration::from_millis(2);
        let recorder = Recorder::start(c).unwrap();
        let paths: Vec<PathBuf> = (0..3).map(|i| dir.path(&format!("f{i}.jsonl"))).collect();
        let files: Vec<_> = paths
            .iter()
            .map(|p| recorder.open(p, OpenMode::Append).unwrap())
            .collect();
        const THREADS: u64 = 8;
        const PER_FILE: u64 = 300;
        on_threads(THREADS, |t| {
            for i in 0..PER_FILE {
                for f in &files {
                    f.record_text(Direction::In, &format!(r#"{{"t":{t},"i":{i}}}"#), Some(t));
                }
            }
        });
        recorder.flush_all().unwrap();
        for (path, file) in paths.iter().zip(&files) {
            let all = entries(path);
            assert_eq!(all.len() as u64, THREADS * PER_FILE, "{}", path.display());
            let mut seen = HashSet::new();
            let mut last_i = vec![None::<u64>; THREADS as usize];
            for e in &all {
                let EntryKind::Text(t) = &e.kind else {
                    panic!("{e:?}")
                };
                let v: serde_json::Value = serde_json::from_str(t).unwrap();
                let (thread, i) = (v["t"].as_u64().unwrap(), v["i"].as_u64().unwrap());
                assert_eq!(e.conn, Some(thread));
                assert!(seen.insert((thread, i)), "duplicate {t}");
                // One thread's entries reach the writer in order and are stamped
                // in order, and the stable sort keeps them so.
                let last = &mut last_i[thread as usize];
                assert!(
                    last.is_none_or(|l| l < i),
                    "thread {thread}: {i} after {last:?}"
                );
                *last = Some(i);
            }
            let stats = file.stats();
            assert_eq!(stats.entries, THREADS * PER_FILE);
            assert_eq!((stats.dropped, stats.write_errors), (0, 0));
        }
        assert_eq!(recorder.stats().total.entries, 3 * THREADS * PER_FILE);
        recorder.stop().unwrap();
    });
}

#[test]
fn background_syncs_during_batched_recording_lose_and_reorder_nothing() {
    within(LIMIT, || {
        let dir = TempDir::new("bgsync");
        let mut c = config();
        c.batch_size = 8;
        c.flush_interval = Duration::from_millis(1);
        // Every written batch asks for a background fsync.
        c.background_sync_bytes = 1;
        let recorder = Recorder::start(c).unwrap();
        let paths: Vec<PathBuf> = (0..2).map(|i| dir.path(&format!("s{i}.jsonl"))).collect();
        let files: Vec<_> = paths
            .iter()
            .map(|p| recorder.open(p, OpenMode::Truncate).unwrap())
            .collect();
        const THREADS: u64 = 4;
        const BATCHES: u64 = 50;
        on_threads(THREADS, |t| {
            for b in 0..BATCHES {
                // Frames that share a stamp, with a lifecycle entry and
                // a binary frame among them: packed into bursts.
                let ts = SystemTime::now();
                let text = |i: u64| Entry {
                    ts,
                    dir: Direction::In,
                    kind: EntryKind::Text(format!(r#"{{"t":{t},"i":{}}}"#, b * 10 + i)),
                    conn: Some(t),
                };
                let mut batch: Vec<Entry> = (0..5).map(text).collect();
                batch.push(Entry {
                    ts,
                    dir: Direction::Internal,
                    kind: EntryKind::Reconnected {
                        attempt: b as u32 + 1,
                    },
                    conn: Some(t),
                });
                batch.push(Entry {
                    ts,
                    dir: Direction::In,
                    kind: EntryKind::Binary(vec![t as u8, b as u8]),
                    conn: Some(t),
                });
                batch.extend((5..10).map(text));
                for f in &files {
                    f.record_batch(batch.clone());
                }
                if b % 10 == 0 {
                    files[(t % 2) as usize].flush().unwrap();
                }
            }
        });
        recorder.flush_all().unwrap();
        for (path, file) in paths.iter().zip(&files) {
            let all = entries(path);
            assert_eq!(
                all.len() as u64,
                THREADS * BATCHES * 12,
                "{}",
                path.display()
            );
            let mut next = vec![0u64; THREADS as usize];
            for e in &all {
                let t = e.conn.unwrap() as usize;
                match &e.kind {
                    EntryKind::Text(text) => {
                        let v: serde_json::Value = serde_json::from_str(text).unwrap();
                        assert_eq!(v["i"].as_u64(), Some(next[t]), "thread {t} out of order");
                        next[t] += 1;
                    }
                    EntryKind::Binary(b) => assert_eq!(b, &vec![t as u8, (next[t] / 10) as u8]),
                    EntryKind::Reconnected { attempt } => {
                        assert_eq!(u64::from(*attempt), next[t] / 10 + 1)
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(next.iter().all(|&n| n == BATCHES * 10), "{next:?}");
            let stats = file.stats();
            assert_eq!((stats.dropped, stats.write_errors), (0, 0));
        }
        recorder.stop().unwrap();
    });
}

#[test]
fn a_batch_recorded_by_many_threads_is_written_in_time_order() {
    within(LIMIT, || {
        let dir = TempDir::new("chrono");
        let path = dir.path("pool.jsonl");
        let recorder = Recorder::start(hold_everything()).unwrap();
        let file = recorder.open(&path, OpenMode::Append).unwrap();
        on_threads(8, |t| {
            for i in 0..500 {
                file.record_text(Direction::In, &format!("{t}/{i}"), Some(t));
            }
        });
        file.flush().unwrap();
        let all = entries(&path);
        assert_eq!(all.len(), 4000);
        assert!(
            all.windows(2).all(|w| w[0].ts <= w[1].ts),
            "the file is not in time order"
        );
        recorder.stop().unwrap();
    });
}

#[test]
fn appending_across_two_recorder_sessions_keeps_both() {
    within(LIMIT, || {
        let dir = TempDir::new("append");
        let path = dir.path("s.jsonl");
        for session in 0..2 {
            let recorder = Recorder::start(config()).unwrap();
            let file = recorder.open(&path, OpenMode::Append).unwrap();
            for i in 0..3 {
                file.record_text(Direction::Out, &format!("{session}.{i}"), None);
            }
            recorder.stop().unwrap();
        }
        assert_eq!(texts(&path), ["0.0", "0.1", "0.2", "1.0", "1.1", "1.2"]);
    });
}

#[test]
fn truncate_replaces_what_was_there() {
    within(LIMIT, || {
        let dir = TempDir::new("truncate");
        let path = dir.path("t.jsonl");
        fs::write(&path, "old line\nanother old line\n").unwrap();
        let recorder = Recorder::start(config()).unwrap();
        let file = recorder.open(&path, OpenMode::Truncate).unwrap();
        file.record_text(Direction::In, "new", None);
        file.flush().unwrap();
        assert_eq!(texts(&path), ["new"]);
        recorder.stop().unwrap();
    });
}

#[test]
fn atomic_replace_keeps_the_old_file_when_abandoned_and_replaces_it_on_commit() {
    within(LIMIT, || {
        let dir = TempDir::new("atomic");
        let path = dir.path("cassette.jsonl");
        let old = r#"{"ts":"2020-01-01T00:00:00Z","dir":"in","type":"text","data":"old"}"#;
        fs::write(&path, format!("{old}\n")).unwrap();
        let recorder = Recorder::start(config()).unwrap();

        // Abandoned by dropping every handle: the old file stays, the temp file goes.
        let file = recorder.open(&path, OpenMode::ReplaceAtomically).unwrap();
        file.record_text(Direction::In, "new-1", None);
        file.flush().unwrap();
        assert_eq!(texts(&path), ["old"]);
        assert_eq!(dir.files().len(), 2, "a temporary file beside the target");
        drop(file);
        recorder.flush_all().unwrap(); // processed after the release, FIFO
        assert_eq!(texts(&path), ["old"]);
        assert_eq!(dir.files(), ["cassette.jsonl"]);

        // Committed: replaced as a whole; later entries append to the new file.
        let file = recorder.open(&path, OpenMode::ReplaceAtomically).unwrap();
        file.record_text(Direction::In, "new-1", None);
        file.record_text(Direction::In, "new-2", None);
        assert_eq!(texts(&path), ["old"]);
        file.commit().unwrap();
        assert_eq!(texts(&path), ["new-1", "new-2"]);
        assert_eq!(dir.files(), ["cassette.jsonl"]);
        file.record_text(Direction::In, "new-3", None);
        file.commit().unwrap();
        assert_eq!(texts(&path), ["new-1", "new-2", "new-3"]);
        drop(file);

        // Abandoned by stopping without a commit.
        let file = recorder.open(&path, OpenMode::ReplaceAtomically).unwrap();
        file.record_text(Direction::In, "never", None);
        recorder.stop().unwrap();
        assert_eq!(texts(&path), ["new-1", "new-2", "new-3"]);
        assert_eq!(dir.files(), ["cassette.jsonl"]);
        assert!(file.commit().is_err(), "commit after stop");
    });
}

#[test]
fn a_write_error_on_dev_full_is_reported_by_flush_and_stats_while_another_file_keeps_working() {
    if !Path::new("/dev/full").exists() {
        eprintln!("no /dev/full here; skipped");
        return;
    }
    let _guard = process_wide();
    within(LIMIT, || {
        let dir = TempDir::new("full");
        let good_path = dir.path("good.jsonl");
        let recorder = Recorder::start(config()).unwrap();
        let full = recorder.open("/dev/full", OpenMode::Append).unwrap();
        let good = recorder.open(&good_path, OpenMode::Append).unwrap();
        for i in 0..5 {
            full.record_text(Direction::In, &format!("lost {i}"), None);
            good.record_text(Direction::In, &format!("kept {i}"), None);
        }
        let err = full.flush().unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Storage);
        match &err {
            Error::Storage { path, source } => {
                assert_eq!(path, Path::new("/dev/full"));
                assert_eq!(source.raw_os_error(), Some(28), "ENOSPC: {source}");
            }
            other => panic!("{other:?}"),
        }
        let stats = full.stats();
        assert_eq!(stats.entries, 0);
        assert_eq!(stats.write_errors, 5, "every lost entry is counted");
        // Reported once: the next flush has nothing new to report.
        full.flush().unwrap();

        good.flush().unwrap();
        assert_eq!(texts(&good_path).len(), 5);
        assert_eq!(good.stats().entries, 5);

        // Still failing, still serving the other file; flush_all reports it.
        full.record_text(Direction::In, "lost again", None);
        good.record_text(Direction::In, "kept again", None);
        assert!(recorder.flush_all().is_err());
        assert_eq!(texts(&good_path).len(), 6);
        assert_eq!(full.stats().write_errors, 6);
        let total = recorder.stats().total;
        assert_eq!((total.entries, total.write_errors), (6, 6));
        recorder.stop().unwrap();
    });
}

#[test]
fn opening_in_a_missing_directory_fails_with_the_path() {
    within(LIMIT, || {
        let dir = TempDir::new("missing");
        let path = dir.path("no-such-dir").join("x.jsonl");
        let recorder = Recorder::start(config()).unwrap();
        for mode in [
            OpenMode::Append,
            OpenMode::Truncate,
            OpenMode::ReplaceAtomically,
        ] {
            let err = recorder.open(&path, mode).unwrap_err();
            assert!(matches!(err, Error::Storage { .. }), "{err:?}");
            assert!(err.to_string().contains("no-such-dir"), "{err}");
        }
        recorder.stop().unwrap();
    });
}

#[test]
fn a_truncated_last_line_is_reported_by_recording_and_metadata() {
    within(LIMIT, || {
        let dir = TempDir::new("cut");
        let path = dir.path("crash.jsonl");
        let recorder = Recorder::start(config()).unwrap();
        let file = recorder.open(&path, OpenMode::Append).unwrap();
        file.record_text(Direction::Out, "a", None);
        file.record_text(Direction::In, "b", None);
        recorder.stop().unwrap();
        // What a crash in the middle of a write leaves behind.
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(br#"{"ts":"2026-12-02T00:31:07.1234"#)
            .unwrap();

        let items: Vec<_> = Recording::open(&path).unwrap().collect();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[1].is_ok());
        let bad = items[2].clone().unwrap_err();
        assert_eq!((bad.line, bad.truncated), (3, true));

        let meta = recorder::metadata(&path).unwrap();
        assert_eq!(meta.count, 2);
        assert_eq!(meta.bad_lines, [3]);
        assert!(meta.truncated_last_line);
        assert_eq!(meta.to_json()["truncated_last_line"], true);

        let summary = recorder::replay(&path, |_| {}).unwrap();
        assert_eq!((summary.entries, summary.bad_lines), (2, 1));
        assert!(summary.truncated_last_line);
    });
}

#[test]
fn bad_lines_in_the_middle_are_skipped_not_fatal() {
    within(LIMIT, || {
        let dir = TempDir::new("bad");
        let path = dir.path("bad.jsonl");
        let good = r#"{"ts":"2026-12-02T00:31:07Z","dir":"in","type":"text","data":"ok"}"#;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(good.as_bytes());
        bytes.extend_from_slice(b"\n\xff\xfe not utf-8\n\n{\"ts\":1}\n");
        bytes.extend_from_slice(good.as_bytes());
        bytes.push(b'\n');
        fs::write(&path, bytes).unwrap();
        let meta = recorder::metadata(&path).unwrap();
        assert_eq!(meta.count, 2);
        assert_eq!(meta.bad_lines, [2, 4]);
        assert!(!meta.truncated_last_line);
        let bad: Vec<_> = Recording::open(&path)
            .unwrap()
            .filter_map(Result::err)
            .collect();
        assert!(bad[0].error.contains("UTF-8"), "{}", bad[0]);
    });
}

#[test]
fn credentials_never_reach_the_file() {
    within(LIMIT, || {
        let dir = TempDir::new("redact");
        let path = dir.path("r.jsonl");
        let recorder = Recorder::start(config()).unwrap();
        let file = recorder.open(&path, OpenMode::Append).unwrap();
        file.record_lifecycle(
            EntryKind::Connected {
                url: "wss://bob:PW-1111@example.com/ws?api_key=KEY-2222".into(),
            },
            None,
        );
        file.record_text(
            Direction::Out,
            r#"{"jsonrpc":"2.0","id":1,"method":"public/auth","params":{"grant_type":"client_credentials","client_id":"id","client_secret":"SECRET-3333"}}"#,
            None,
        );
        file.record_text(
            Direction::In,
            r#"{"id":1,"result":{"access_token":"AT-4444","refresh_token":"RT-5555","scope":"x"}}"#,
            None,
        );
        file.record_text(
            Direction::Out,
            "client_id=id&client_secret=SECRET-6666",
            None,
        );
        file.record_close(Direction::In, Some(4001), "invalid token=TOK-7777", None);
        file.flush().unwrap();
        let bytes = fs::read(&path).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        for secret in ["1111", "2222", "3333", "4444", "5555", "6666", "7777"] {
            assert!(!text.contains(secret), "{secret} reached the file:\n{text}");
        }
        assert_eq!(text.matches("[REDACTED]").count(), 7, "{text}");
        assert!(
            text.contains(r#"\"client_id\":\"id\""#),
            "the rest is kept:\n{text}"
        );
        recorder.stop().unwrap();
    });
}

#[test]
fn entries_recorded_after_stop_are_counted_as_dropped() {
    within(LIMIT, || {
        let dir = TempDir::new("stopped");
        let path = dir.path("s.jsonl");
        let mut c = config();
        c.overflow = Overflow::DropAndCount;
        let recorder = Recorder::start(c).unwrap();
        let file = recorder.open(&path, OpenMode::Append).unwrap();
        file.record_text(Direction::In, "kept", None);
        recorder.stop().unwrap();
        recorder.stop().unwrap(); // idempotent
        assert!(recorder.is_stopped());
        file.record_text(Direction::In, "dropped 1", None);
        file.record_binary(Direction::In, b"dropped 2", None);
        let stats = file.stats();
        assert_eq!((stats.entries, stats.dropped), (1, 2));
        assert_eq!(recorder.stats().total.dropped, 2);
        assert!(
            file.flush().is_err(),
            "dropped entries are never acknowledged"
        );
        assert!(recorder
            .open(dir.path("other.jsonl"), OpenMode::Append)
            .is_err());
        recorder.flush_all().unwrap(); // nothing pending after stop
        assert_eq!(texts(&path), ["kept"]);
    });
}

#[test]
fn drop_and_count_drops_when_the_writer_is_stuck_and_loses_nothing_silently() {
    let _guard = process_wide();
    within(LIMIT, || {
        let dir = TempDir::new("fifo");
        let fifo = dir.path("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("mkfifo unavailable; skipped");
            return;
        }
        let other_path = dir.path("other.jsonl");
        let mut c = config();
        c.channel_capacity = 1;
        c.overflow = Overflow::DropAndCount;
        let recorder = Recorder::start(c).unwrap();
        let other = recorder.open(&other_path, OpenMode::Append).unwrap();

        // Opening a FIFO for writing blocks until a reader comes: the writer
        // thread is stuck there, and the one-slot channel fills up.
        let opener = {
            let recorder = recorder.clone();
            let fifo = fifo.clone();
            thread::spawn(move || recorder.open(&fifo, OpenMode::Append))
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut recorded = 0u64;
        while other.stats().dropped == 0 {
            assert!(Instant::now() < deadline, "nothing was ever dropped");
            other.record_text(Direction::Out, &format!("n{recorded}"), None);
            recorded += 1;
            thread::yield_now();
        }

        // Unblock the writer: be the FIFO's reader, and read until it closes.
        let reader = {
            let fifo = fifo.clone();
            thread::spawn(move || {
                let mut s = String::new();
                fs::File::open(&fifo)
                    .unwrap()
                    .read_to_string(&mut s)
                    .unwrap();
                s
            })
        };
        let piped = opener.join().unwrap().unwrap();
        piped.record_text(Direction::In, "through the pipe", None);
        piped.flush().unwrap();
        drop(piped); // closes the FIFO, so the reader sees its end
        let through = reader.join().unwrap();
        assert_eq!(through.lines().count(), 1, "{through}");

        other.flush().unwrap();
        let stats = other.stats();
        assert!(stats.dropped >= 1);
        assert_eq!(stats.entries + stats.dropped, recorded, "{stats:?}");
        assert_eq!(texts(&other_path).len() as u64, stats.entries);
        recorder.stop().unwrap();
    });
}

#[test]
fn every_entry_is_either_written_or_counted_with_a_one_slot_channel() {
    within(LIMIT, || {
        let dir = TempDir::new("slot");
        for overflow in [Overflow::DropAndCount, Overflow::Block] {
            let path = dir.path(&format!("{overflow:?}.jsonl"));
            let mut c = config();
            c.channel_capacity = 1;
            c.batch_size = 7;
            c.overflow = overflow;
            let recorder = Recorder::start(c).unwrap();
            let file = recorder.open(&path, OpenMode::Append).unwrap();
            on_threads(4, |t| {
                for i in 0..500 {
                    file.record_text(Direction::In, &format!("{t}.{i}"), None);
                }
            });
            file.flush().unwrap();
            let stats = file.stats();
            assert_eq!(
                stats.entries + stats.dropped,
                2000,
                "{overflow:?}: {stats:?}"
            );
            if overflow == Overflow::Block {
                assert_eq!(stats.dropped, 0, "Block never loses an entry");
            }
            assert_eq!(texts(&path).len() as u64, stats.entries);
            recorder.stop().unwrap();
        }
    });
}

#[test]
fn flush_all_recorders_flushes_every_live_recorder() {
    let _guard = process_wide();
    within(LIMIT, || {
        let dir = TempDir::new("flushall");
        let recorders: Vec<_> = (0..2)
            .map(|_| Recorder::start(hold_everything()).unwrap())
            .collect();
        let files: Vec<_> = recorders
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.open(dir.path(&format!("{i}.jsonl")), OpenMode::Append)
                    .unwrap()
            })
            .collect();
        for f in &files {
            f.record_text(Direction::In, "held", None);
        }
        assert!(
            texts(&dir.path("0.jsonl")).is_empty(),
            "held back until a flush"
        );
        flush_all_recorders().unwrap();
        for i in 0..2 {
            assert_eq!(texts(&dir.path(&format!("{i}.jsonl"))), ["held"]);
        }
        for r in &recorders {
            r.stop().unwrap();
        }
    });
}

#[test]
fn entries_are_written_by_age_and_by_batch_size_without_a_flush() {
    within(LIMIT, || {
        let dir = TempDir::new("triggers");
        let by_age = dir.path("age.jsonl");
        let by_size = dir.path("size.jsonl");
        let mut c = config();
        c.flush_interval = Duration::from_millis(10);
        let age_recorder = Recorder::start(c).unwrap();
        let age_file = age_recorder.open(&by_age, OpenMode::Append).unwrap();
        let mut c = hold_everything();
        c.batch_size = 3;
        let size_recorder = Recorder::start(c).unwrap();
        let size_file = size_recorder.open(&by_size, OpenMode::Append).unwrap();

        age_file.record_text(Direction::In, "old enough", None);
        for i in 0..3 {
            size_file.record_text(Direction::In, &format!("{i}"), None);
        }
        let limit = Duration::from_secs(20);
        assert!(eventually(limit, || complete_entries(&by_age) == 1));
        assert!(eventually(limit, || complete_entries(&by_size) == 3));
        age_recorder.stop().unwrap();
        size_recorder.stop().unwrap();
    });
}

#[test]
fn a_flood_of_full_batches_reaches_the_file_without_a_flush() {
    // Full batches coalesce into large writes; what is left after the last
    // one (part of a line, even) must still go out soon, not at the next
    // flush_interval (an hour here).
    within(LIMIT, || {
        let dir = TempDir::new("coalesced");
        let path = dir.path("flood.jsonl");
        let mut c = hold_everything();
        c.batch_size = 64;
        let recorder = Recorder::start(c).unwrap();
        let file = recorder.open(&path, OpenMode::Append).unwrap();
        let n = 3_000; // about 500 KB: two large writes and a rest
        for i in 0..n {
            file.record_text(Direction::In, &format!("{i:05} {}", "é".repeat(60)), None);
        }
        assert!(eventually(Duration::from_secs(20), || complete_entries(
            &path
        ) == n));
        let read = texts(&path);
        assert_eq!(read.len(), n);
        for (i, t) in read.iter().enumerate() {
            assert!(t.starts_with(&format!("{i:05} ")), "entry {i} is {t:?}");
        }
        // Nothing is half written: the last line is whole.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(file.stats().entries as usize, n);
        recorder.stop().unwrap();
    });
}

#[test]
fn writing_a_full_batch_early_leaves_the_next_batch_its_window_to_sort() {
    // The output of a full batch may linger to join a larger write; when it
    // goes, entries still pending must stay pending, so that one arriving
    // later with an earlier stamp is still sorted before them.
    within(LIMIT, || {
        let dir = TempDir::new("window");
        let path = dir.path("window.jsonl");
        let mut c = hold_everything();
        c.batch_size = 8;
        let recorder = Recorder::start(c).unwrap();
        let file = recorder.open(&path, OpenMode::Append).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |s: u64, text: &str| Entry {
            ts: t0 + Duration::from_secs(s),
            dir: Direction::In,
            kind: EntryKind::Text(text.into()),
            conn: None,
        };
        for i in 0..8 {
            file.record(at(i, &format!("full {i}")));
        }
        file.record(at(30, "late stamp, early arrival"));
        // The full batch reaches the file (its linger), the pending entry does not.
        assert!(eventually(Duration::from_secs(20), || complete_entries(
            &path
        ) == 8));
        file.record(at(20, "early stamp, late arrival"));
        file.flush().unwrap();
        let read = texts(&path);
        assert_eq!(
            read[8..],
            ["early stamp, late arrival", "late stamp, early arrival"]
        );
        recorder.stop().unwrap();
    });
}

#[test]
fn dropping_the_last_recorder_handle_flushes_and_stops_the_thread() {
    within(LIMIT, || {
        let dir = TempDir::new("dropped");
        let path = dir.path("d.jsonl");
        let recorder = Recorder::start(hold_everything()).unwrap();
        let clone = recorder.clone();
        let file = recorder.open(&path, OpenMode::Append).unwrap();
        file.record_text(Direction::In, "pending at drop", None);
        drop(recorder);
        assert!(texts(&path).is_empty(), "a clone keeps the thread running");
        drop(clone);
        assert_eq!(texts(&path), ["pending at drop"]);
        file.record_text(Direction::In, "too late", None);
        assert_eq!(file.stats().dropped, 1);
    });
}

#[test]
fn opening_the_same_path_twice_shares_the_file() {
    within(LIMIT, || {
        let dir = TempDir::new("shared");
        let path = dir.path("s.jsonl");
        let recorder = Recorder::start(hold_everything()).unwrap();
        let a = recorder.open(&path, OpenMode::Truncate).unwrap();
        let b = recorder
            .open(dir.root().join(".").join("s.jsonl"), OpenMode::Truncate)
            .unwrap();
        assert_eq!(a.path(), b.path());
        a.record_text(Direction::In, "a", None);
        b.record_text(Direction::In, "b", None);
        drop(a); // the file stays open for `b`
        b.flush().unwrap();
        assert_eq!(texts(&path), ["a", "b"]);
        assert_eq!(b.stats().entries, 2);
        assert_eq!(recorder.stats().files.len(), 1);
        let err = recorder.open(&path, OpenMode::Append).unwrap_err();
        assert!(
            matches!(&err, Error::Config(c) if c.field == "mode"),
            "{err:?}"
        );
        recorder.flush(&path).unwrap();
        recorder.flush(dir.path("never-opened.jsonl")).unwrap();
        recorder.stop().unwrap();
    });
}

#[test]
fn replay_timed_keeps_order_and_scaled_gaps() {
    within(LIMIT, || {
        let dir = TempDir::new("timed");
        let path = dir.path("t.jsonl");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_796_171_467);
        let gaps_ms = [0u64, 40, 0, 80, 20];
        let recorder = Recorder::start(config()).unwrap();
        let file = recorder.open(&path, OpenMode::Append).unwrap();
        let mut at = t0;
        for (i, gap) in gaps_ms.iter().enumerate() {
            at += Duration::from_millis(*gap);
            file.record(Entry {
                ts: at,
                dir: Direction::In,
                kind: EntryKind::Text(format!("{i}")),
                conn: None,
            });
        }
        recorder.stop().unwrap();

        let speed = 2.0;
        let mut seen: Vec<(String, Instant)> = Vec::new();
        let started = Instant::now();
        let summary = recorder::replay_timed(&path, speed, |e| {
            let EntryKind::Text(t) = &e.kind else {
                panic!("{e:?}")
            };
            seen.push((t.clone(), Instant::now()));
        })
        .unwrap();
        let total = started.elapsed();
        assert_eq!(summary.entries, 5);
        let order: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(order, ["0", "1", "2", "3", "4"]);
        for (i, w) in seen.windows(2).enumerate() {
            let expected = Duration::from_millis(gaps_ms[i + 1]).div_f64(speed);
            // The callback stamps itself a hair after replay's own stamp.
            let actual = w[1].1 - w[0].1 + Duration::from_millis(1);
            assert!(actual >= expected, "gap {i}: {actual:?} < {expected:?}");
        }
        assert!(total >= Duration::from_millis(70), "{total:?}");
    });
}

#[test]
fn replay_timed_refuses_a_speed_that_is_not_positive() {
    for speed in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
        let err = recorder::replay_timed("/nonexistent", speed, |_| {}).unwrap_err();
        assert!(
            matches!(&err, Error::Config(c) if c.field == "speed"),
            "{speed}: {err:?}"
        );
    }
    let err = recorder::replay_timed("/nonexistent/x.jsonl", 1.0, |_| {}).unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
}

#[test]
fn a_zen_websocket_recording_is_read() {
    within(LIMIT, || {
        let dir = TempDir::new("elixir");
        let path = dir.path("elixir.jsonl");
        let lines = [
            r#"{"ts":"2025-06-01T12:00:00.000000Z","dir":"out","type":"text","data":"{\"action\":\"subscribe\"}"}"#,
            r#"{"ts":"2025-06-01T12:00:00.250Z","dir":"in","type":"text","data":"{\"ok\":true}"}"#,
            r#"{"ts":"2025-06-01T12:00:01Z","dir":"in","type":"binary","data":"3q2+7w==","binary":true}"#,
            r#"{"ts":"2025-06-01T12:00:02.5Z","dir":"in","type":"text","data":"AAEC","binary":true}"#,
            r#"{"ts":"2025-06-01T12:00:03Z","dir":"in","type":"close","data":"{\"code\":1000,\"reason\":\"normal\"}"}"#,
        ];
        fs::write(&path, lines.join("\n") + "\n").unwrap();
        let all = entries(&path);
        assert_eq!(all.len(), 5);
        assert_eq!(all[0].dir, Direction::Out);
        assert_eq!(all[2].kind, EntryKind::Binary(vec![0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(all[3].kind, EntryKind::Binary(vec![0, 1, 2]));
        assert_eq!(
            all[4].kind,
            EntryKind::Close {
                code: Some(1000),
                reason: "normal".into()
            }
        );
        let meta = recorder::metadata(&path).unwrap();
        assert_eq!((meta.inbound, meta.outbound), (4, 1));
        assert_eq!(meta.by_type["binary"], 2);
        assert_eq!(meta.duration, Duration::from_secs(3));
        assert_eq!(meta.bytes, 22 + 11 + 4 + 3);
        let json = meta.to_json();
        assert_eq!(json["first_ts"], "2025-06-01T12:00:00.000000Z");
        assert_eq!(json["duration_ms"], 3000);
    });
}

#[test]
fn a_recording_round_trips_every_entry_kind() {
    within(LIMIT, || {
        let dir = TempDir::new("kinds");
        let path = dir.path("k.jsonl");
        let recorder = Recorder::start(config()).unwrap();
        let file = recorder.open(&path, OpenMode::Append).unwrap();
        let t = SystemTime::now();
        let kinds = vec![
            EntryKind::Connected {
                url: "wss://example.com".into(),
            },
            EntryKind::Text("hello".into()),
            EntryKind::Binary(vec![1, 2, 3]),
            EntryKind::Close {
                code: Some(1001),
                reason: "away".into(),
            },
            EntryKind::Disconnected {
                cause: "reset".into(),
            },
            EntryKind::Reconnecting {
                attempt: 1,
                delay_ms: 250,
            },
            EntryKind::Reconnected { attempt: 1 },
        ];
        for (i, kind) in kinds.iter().enumerate() {
            let dir = if kind.is_lifecycle() {
                Direction::Internal
            } else {
                Direction::In
            };
            file.record(Entry {
                ts: t + Duration::from_micros(i as u64),
                dir,
                kind: kind.clone(),
                conn: Some(9),
            });
        }
        recorder.stop().unwrap();
        let read: Vec<EntryKind> = entries(&path).into_iter().map(|e| e.kind).collect();
        assert_eq!(read, kinds);
        let meta = recorder::metadata(&path).unwrap();
        assert_eq!((meta.lifecycle, meta.inbound), (4, 3));
        assert_eq!(meta.connections.into_iter().collect::<Vec<_>>(), [9]);
    });
}

#[test]
fn an_invalid_config_names_its_field() {
    type Breaker = fn(&mut RecorderConfig);
    let cases: [(&str, Breaker); 4] = [
        ("batch_size", |c| c.batch_size = 0),
        ("flush_interval", |c| c.flush_interval = Duration::ZERO),
        ("channel_capacity", |c| c.channel_capacity = 0),
        ("flush_timeout", |c| c.flush_timeout = Duration::ZERO),
    ];
    for (field, break_it) in cases {
        let mut c = RecorderConfig::default();
        break_it(&mut c);
        let err = Recorder::start(c).unwrap_err();
        assert!(
            matches!(&err, Error::Config(e) if e.field == field),
            "{err:?}"
        );
    }
}

#[test]
fn the_global_recorder_is_shared_and_flush_on_ctrl_c_can_be_installed_twice() {
    let _guard = process_wide();
    let a = Recorder::global().unwrap();
    let b = Recorder::global().unwrap();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    recorder::flush_on_ctrl_c().unwrap();
    recorder::flush_on_ctrl_c().unwrap();
}

#[test]
fn the_example_lines_of_the_format_document_are_what_we_write_and_read() {
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recording-format.md"))
            .unwrap();
    let blocks: Vec<&str> = doc
        .split("```jsonl\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 2, "our format, then ZenWebsocket's");
    let redactor = recorder::Redactor::default();
    let ours: Vec<&str> = blocks[0].lines().collect();
    assert_eq!(ours.len(), 9);
    let mut types = HashSet::new();
    for line in ours {
        let e = recorder::decode(line).unwrap_or_else(|err| panic!("{line}: {err}"));
        types.insert(e.kind.type_name());
        assert_eq!(
            recorder::encode(&e, &redactor),
            line,
            "we write exactly this"
        );
    }
    assert_eq!(types.len(), 7, "every type has an example");
    for line in blocks[1].lines() {
        recorder::decode(line).unwrap_or_else(|err| panic!("{line}: {err}"));
    }
}
