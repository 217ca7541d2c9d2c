//! Recording throughput, on loopback and a temporary directory.
//!
//! Run with `cargo bench --bench recorder`:
//!
//! * (a) the writer thread alone: 100-byte text entries into one file, handed
//!   over in batches of 256 as a connection does, entries per second including
//!   the final flush (fsync); best of three rounds;
//! * (b) the inbound flood of the throughput bench, recording on versus off, in
//!   the same run: thirty pairs of rounds, one of each back to back, in
//!   alternating order; the figure is the median of the pairs' on/off ratios.
//!   Why that statistic: a single 0.2 s round on a shared 2-core machine
//!   varies by ±30 % and more, in phases that last seconds. The two rounds of
//!   a pair run in the same phase, so their ratio cancels it; alternating
//!   the order cancels whatever the first round leaves to the second (the
//!   recorded file's flush and deletion); the median ignores the pairs that
//!   a burst of noise hit in one round only. The ratio of the best rounds of
//!   each side, which compares two different lucky moments, is printed too.
//!   It runs before (a), whose gigabyte of deleted files the kernel cleans up
//!   in the background for a while afterwards.
//!
//! The last line is `RESULT entries_per_s=<n> recording_ratio=<on/off>`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use zen_websocket::recorder::{Direction, Entry, EntryKind, OpenMode, Recorder, RecorderConfig};
use zen_websocket::{Client, Config, Event, Message};

const WRITER_ENTRIES: usize = 2_000_000;
const WRITER_ROUNDS: usize = 3;
const FLOOD_MESSAGES: usize = 500_000;
const FLOOD_ROUNDS: usize = 30;

fn main() {
    start_watchdog(Duration::from_secs(300));
    let dir = std::env::temp_dir().join(format!("zen-ws-bench-recorder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the temp dir");

    // (b) first: (a) leaves a gigabyte of deleted files behind, and the
    // kernel's clean-up of them must not run during the timed flood.
    let ratio = recording_ratio(&dir);
    let best_writer = writer_throughput(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    println!("writer best {:.2} M entries/s", best_writer / 1e6);
    println!("RESULT entries_per_s={best_writer:.0} recording_ratio={ratio:.2}");
}

/// (a) The writer alone: best entries per second over the rounds.
fn writer_throughput(dir: &std::path::Path) -> f64 {
    let payload: String = (0..FLOOD_PAYLOAD)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let mut best_writer = 0f64;
    for round in 0..WRITER_ROUNDS {
        let recorder = Recorder::start(RecorderConfig::default()).expect("starting a recorder");
        let path = dir.join(format!("writer-{round}.jsonl"));
        let file = recorder
            .open(&path, OpenMode::Truncate)
            .expect("opening the bench file");
        let started = Instant::now();
        // Handed over in bursts of 256, as a connection does with a read burst.
        let mut left = WRITER_ENTRIES;
        while left > 0 {
            let n = left.min(256);
            let ts = std::time::SystemTime::now();
            let burst = (0..n)
                .map(|_| Entry {
                    ts,
                    dir: Direction::In,
                    kind: EntryKind::Text(payload.clone()),
                    conn: Some(1),
                })
                .collect();
            file.record_batch(burst);
            left -= n;
        }
        let handed_over = started.elapsed();
        file.flush().expect("flushing the bench file");
        let elapsed = started.elapsed();
        let rate = WRITER_ENTRIES as f64 / elapsed.as_secs_f64();
        let stats = file.stats();
        assert_eq!(stats.entries as usize, WRITER_ENTRIES, "entries lost");
        println!(
            "writer round {round}: {WRITER_ENTRIES} entries in {elapsed:?} = {:.2} M entries/s ({:.1} MB; the final flush took {:?})",
            rate / 1e6,
            stats.bytes as f64 / 1e6,
            elapsed - handed_over
        );
        best_writer = best_writer.max(rate);
        recorder.stop().expect("stopping the recorder");
        let _ = std::fs::remove_file(&path);
    }

    best_writer
}

/// (b) The client flood, recording off and on: the median ratio of pairs.
fn recording_ratio(dir: &std::path::Path) -> f64 {
    let flood = Arc::<[u8]>::from(flood_stream(FLOOD_MESSAGES));
    let server = Server::start("flood", flood, serve_flood);
    let recorder = Recorder::start(RecorderConfig::default()).expect("starting a recorder");
    let (mut offs, mut ons) = (Vec::new(), Vec::new());
    for round in 0..FLOOD_ROUNDS {
        let path = dir.join(format!("flood-{round}.jsonl"));
        let on_round = || {
            let before = recorder.stats().total.entries;
            let r_on = flood_round(&server.url(), Some((&recorder, &path)));
            // Let the writer catch up untimed, so rounds do not bleed into each other.
            recorder.flush(&path).expect("flushing the flood recording");
            let recorded = recorder.stats().total.entries - before;
            assert!(
                recorded as usize > FLOOD_MESSAGES,
                "the recording lost entries"
            );
            r_on
        };
        // Alternate which goes first, so neither side always follows the other.
        let (r_off, r_on) = if round % 2 == 0 {
            let off = flood_round(&server.url(), None);
            (off, on_round())
        } else {
            let on = on_round();
            (flood_round(&server.url(), None), on)
        };
        println!(
            "flood round {round}: off {:.2} M msg/s, on {:.2} M msg/s, ratio {:.2}",
            r_off / 1e6,
            r_on / 1e6,
            r_on / r_off
        );
        offs.push(r_off);
        ons.push(r_on);
        let _ = std::fs::remove_file(&path);
    }
    recorder.stop().expect("stopping the recorder");
    server.stop();
    let best = |v: &[f64]| v.iter().copied().fold(0f64, f64::max);
    let (off, on) = (best(&offs), best(&ons));
    let mut paired: Vec<f64> = ons.iter().zip(&offs).map(|(a, b)| a / b).collect();
    paired.sort_by(f64::total_cmp);
    let median = (paired[(paired.len() - 1) / 2] + paired[paired.len() / 2]) / 2.0;
    println!(
        "flood: median of the pairs' ratios {median:.2} (quartiles {:.2} and {:.2}); best rounds off {:.2} M msg/s, on {:.2} M msg/s, their ratio {:.2}",
        paired[paired.len() / 4],
        paired[paired.len() * 3 / 4],
        off / 1e6,
        on / 1e6,
        on / off
    );
    median
}

/// One flood round; returns messages per second delivered to the consumer.
fn flood_round(url: &str, record: Option<(&Recorder, &std::path::Path)>) -> f64 {
    let mut builder = Config::builder(url)
        .heartbeat_interval(None)
        .reconnect_on_error(false);
    if let Some((recorder, path)) = record {
        builder = builder.recorder(recorder).record_to(path);
    }
    let client = Client::connect(builder.build().expect("config")).expect("connecting");
    let events = client.events();
    let mut count = 0usize;
    let mut first = None;
    loop {
        let next = match events.try_recv() {
            Ok(ev) => Ok(ev),
            Err(_) => events.recv_timeout(READ_TIMEOUT),
        };
        match next {
            Ok(Event::Message(Message::Text(t))) => {
                if t == END_MARKER {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                count += 1;
            }
            Ok(Event::Connected { .. }) => {}
            Ok(other) => panic!("unexpected event during the flood: {other:?}"),
            Err(e) => panic!("no flood message within {READ_TIMEOUT:?}: {e}"),
        }
    }
    let elapsed = first.expect("no message").elapsed();
    assert_eq!(count, FLOOD_MESSAGES, "messages lost");
    client.close().expect("closing the flood client");
    count as f64 / elapsed.as_secs_f64()
}
