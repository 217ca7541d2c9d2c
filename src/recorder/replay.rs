//! Reading recordings: iterate, replay (instantly or with the original
//! timing), and summarize.
//!
//! Files are streamed line by line, never loaded whole. A line that does not
//! decode (bad JSON, bad UTF-8, an unknown type) is a [`BadLine`], reported
//! and skipped; a last line without its newline that does not decode is
//! marked `truncated` (the writer crashed mid-write). Neither is fatal. Only
//! failing to open or read the file is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::entry::{decode, Direction, Entry};
use super::timestamp::format_timestamp;
use crate::{ConfigError, Error, Result};

/// A line of a recording that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// Its line number, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub error: String,
    /// True for a last line without a newline: most likely cut off by a crash.
    pub truncated: bool,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)?;
        if self.truncated {
            f.write_str(" (truncated last line)")?;
        }
        Ok(())
    }
}

/// A recording opened for reading: an iterator over its entries.
///
/// Each item is an [`Entry`] or the [`BadLine`] that stood in its place; blank
/// lines are skipped. A read error after opening ends the iteration with a
/// `BadLine` describing it ([`replay`] and [`metadata`] return it as an error
/// instead).
///
/// ```
/// use zen_websocket::recorder::{Direction, EntryKind, Recording};
/// let path = std::env::temp_dir().join(format!("zen-doc-recording-{}.jsonl", std::process::id()));
/// std::fs::write(&path, concat!(
///     r#"{"ts":"2026-12-02T00:31:07.000001Z","dir":"out","type":"text","data":"ping"}"#, "\n",
///     "not json\n",
///     r#"{"ts":"2026-12-02T00:31:07.000002Z","dir":"in","type":"te"#,
/// )).unwrap();
///
/// let mut recording = Recording::open(&path)?;
/// let first = recording.next().unwrap().unwrap();
/// assert_eq!(first.kind, EntryKind::Text("ping".into()));
/// let bad = recording.next().unwrap().unwrap_err();
/// assert_eq!((bad.line, bad.truncated), (2, false));
/// let cut = recording.next().unwrap().unwrap_err();
/// assert_eq!((cut.line, cut.truncated), (3, true));
/// assert!(recording.next().is_none());
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), zen_websocket::Error>(())
/// ```
#[derive(Debug)]
pub struct Recording {
    path: PathBuf,
    lines: Lines,
    done: bool,
}

impl Recording {
    /// Opens `path`; an [`Error::Storage`] if it cannot be opened.
    pub fn open(path: impl AsRef<Path>) -> Result<Recording> {
        let path = path.as_ref().to_path_buf();
        let lines = Lines::open(&path)?;
        Ok(Recording {
            path,
            lines,
            done: false,
        })
    }

    /// The path it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for Recording {
    type Item = std::result::Result<Entry, BadLine>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.lines.next_item() {
            Ok(Some(item)) => Some(item),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(BadLine {
                    line: self.lines.line + 1,
                    error: format!("read failed: {e}"),
                    truncated: false,
                }))
            }
        }
    }
}

/// The longest line read: a 64 MiB message (the default `max_message_size`) in
/// base64 plus its fields fits.
const MAX_LINE: usize = 96 << 20;

/// Line reader shared by [`Recording`], [`replay`] and [`metadata`].
#[derive(Debug)]
struct Lines {
    reader: BufReader<File>,
    /// Reused for every line; bytes, because bad UTF-8 is a bad line, not an error.
    buf: Vec<u8>,
    /// The number of the last line read.
    line: usize,
}

impl Lines {
    fn open(path: &Path) -> Result<Lines> {
        let file = File::open(path).map_err(|e| Error::storage(path, e))?;
        Ok(Lines {
            reader: BufReader::with_capacity(64 << 10, file),
            buf: Vec::new(),
            line: 0,
        })
    }

    fn next_item(&mut self) -> io::Result<Option<std::result::Result<Entry, BadLine>>> {
        loop {
            self.buf.clear();
            // Bounded: a file without newlines (or /dev/zero) must not grow the
            // buffer without limit.
            let read = (&mut self.reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.buf)?;
            if read == 0 {
                return Ok(None);
            }
            self.line += 1;
            if self.buf.len() > MAX_LINE {
                self.buf = Vec::new();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "line {} is longer than {MAX_LINE} bytes; stopped reading",
                        self.line
                    ),
                ));
            }
            let had_newline = self.buf.last() == Some(&b'\n');
            let bytes = self.buf.trim_ascii();
            if bytes.is_empty() {
                continue;
            }
            let decoded = match std::str::from_utf8(bytes) {
                Ok(text) => decode(text).map_err(|e| e.to_string()),
                Err(e) => Err(format!("not UTF-8 (at byte {})", e.valid_up_to())),
            };
            if self.buf.capacity() > 1 << 20 {
                // One huge line should not pin a huge buffer for the whole file.
                self.buf = Vec::new();
            }
            return Ok(Some(decoded.map_err(|error| BadLine {
                line: self.line,
                error,
                truncated: !had_newline,
            })));
        }
    }
}

/// What [`replay`] and [`replay_timed`] went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplaySummary {
    /// Entries passed to the callback.
    pub entries: u64,
    /// Lines skipped because they did not decode (the truncated one included).
    pub bad_lines: u64,
    /// The last line was cut off (no newline, does not decode).
    pub truncated_last_line: bool,
}

/// Calls `f` with every entry of the recording at `path`, in file order, as
/// fast as possible. Bad lines are skipped and counted.
///
/// ```
/// use zen_websocket::recorder::replay;
/// let path = std::env::temp_dir().join(format!("zen-doc-replay-{}.jsonl", std::process::id()));
/// std::fs::write(&path, concat!(
///     r#"{"ts":"2026-12-02T00:31:07Z","dir":"in","type":"text","data":"a"}"#, "\n",
///     r#"{"ts":"2026-12-02T00:31:08Z","dir":"in","type":"text","data":"b"}"#, "\n",
/// )).unwrap();
/// let mut seen = Vec::new();
/// let summary = replay(&path, |e| seen.push(e.kind.clone()))?;
/// assert_eq!(summary.entries, 2);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), zen_websocket::Error>(())
/// ```
pub fn replay(path: impl AsRef<Path>, f: impl FnMut(&Entry)) -> Result<ReplaySummary> {
    replay_inner(path.as_ref(), None, f)
}

/// Like [`replay`], but waits between entries as long as the recording did,
/// divided by `speed` (2.0 plays twice as fast). `speed` must be a positive
/// number (`f64::INFINITY` means no waiting), else [`Error::Config`] naming
/// `speed`.
///
/// Gaps are kept exactly, however long: a recording with an hour of silence
/// waits an hour at speed 1. Each wait is measured from the moment the
/// previous entry was handed to `f`, so a slow callback eats into the next
/// gap instead of adding to it, and no gap is ever shorter than recorded.
/// Entries out of time order are replayed at once, in file order.
pub fn replay_timed(
    path: impl AsRef<Path>,
    speed: f64,
    f: impl FnMut(&Entry),
) -> Result<ReplaySummary> {
    if speed.is_nan() || speed <= 0.0 {
        return Err(Error::Config(ConfigError::new(
            "speed",
            "must be a positive number",
        )));
    }
    replay_inner(path.as_ref(), Some(speed), f)
}

fn replay_inner(
    path: &Path,
    speed: Option<f64>,
    mut f: impl FnMut(&Entry),
) -> Result<ReplaySummary> {
    let mut lines = Lines::open(path)?;
    let mut summary = ReplaySummary::default();
    let mut previous: Option<(SystemTime, Instant)> = None;
    while let Some(item) = lines.next_item().map_err(|e| Error::storage(path, e))? {
        let entry = match item {
            Ok(entry) => entry,
            Err(bad) => {
                summary.bad_lines += 1;
                summary.truncated_last_line |= bad.truncated;
                continue;
            }
        };
        if let (Some(speed), Some((prev_ts, prev_at))) = (speed, previous) {
            let gap = entry.ts.duration_since(prev_ts).unwrap_or_default();
            let scaled =
                Duration::try_from_secs_f64(gap.as_secs_f64() / speed).unwrap_or(Duration::MAX);
            if let Some(target) = prev_at.checked_add(scaled) {
                let now = Instant::now();
                if target > now {
                    thread::sleep(target - now);
                }
            } else {
                thread::sleep(scaled);
            }
        }
        previous = Some((entry.ts, Instant::now()));
        f(&entry);
        summary.entries += 1;
    }
    Ok(summary)
}

/// A summary of a recording, from [`metadata`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// Entries (lines that decoded).
    pub count: u64,
    /// Entries with direction `in`.
    pub inbound: u64,
    /// Entries with direction `out`.
    pub outbound: u64,
    /// Lifecycle entries (connected, disconnected, reconnecting, reconnected).
    pub lifecycle: u64,
    /// Entries per `type`.
    pub by_type: BTreeMap<String, u64>,
    /// Payload bytes of the text and binary frames (decoded, not as in the file).
    pub bytes: u64,
    /// The earliest time stamp.
    pub first_ts: Option<SystemTime>,
    /// The latest time stamp.
    pub last_ts: Option<SystemTime>,
    /// From the earliest to the latest time stamp.
    pub duration: Duration,
    /// The `conn` ids seen.
    pub connections: BTreeSet<u64>,
    /// Line numbers (from 1) of the lines that did not decode.
    pub bad_lines: Vec<usize>,
    /// The last line was cut off (no newline, does not decode).
    pub truncated_last_line: bool,
}

impl Metadata {
    /// As JSON, with time stamps as RFC 3339 strings and `duration_ms`:
    ///
    /// ```text
    /// {"count":42,"inbound":30,"outbound":12,"lifecycle":0,"by_type":{"text":42},
    ///  "bytes":5120,"first_ts":"2026-12-02T00:31:07.000000Z","last_ts":"…",
    ///  "duration_ms":5000,"connections":[1,2],"bad_lines":[],"truncated_last_line":false}
    /// ```
    pub fn to_json(&self) -> Value {
        json!({
            "count": self.count,
            "inbound": self.inbound,
            "outbound": self.outbound,
            "lifecycle": self.lifecycle,
            "by_type": self.by_type,
            "bytes": self.bytes,
            "first_ts": self.first_ts.map(format_timestamp),
            "last_ts": self.last_ts.map(format_timestamp),
            "duration_ms": u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            "connections": self.connections,
            "bad_lines": self.bad_lines,
            "truncated_last_line": self.truncated_last_line,
        })
    }

    fn add(&mut self, e: &Entry) {
        self.count += 1;
        match e.dir {
            Direction::In => self.inbound += 1,
            Direction::Out => self.outbound += 1,
            Direction::Internal => {}
        }
        if e.kind.is_lifecycle() {
            self.lifecycle += 1;
        }
        *self
            .by_type
            .entry(e.kind.type_name().to_owned())
            .or_default() += 1;
        self.bytes += e.kind.payload_len() as u64;
        self.first_ts = Some(self.first_ts.map_or(e.ts, |t| t.min(e.ts)));
        self.last_ts = Some(self.last_ts.map_or(e.ts, |t| t.max(e.ts)));
        if let Some(conn) = e.conn {
            self.connections.insert(conn);
        }
    }
}

/// Reads the whole recording at `path` (streaming) and summarizes it.
///
/// ```
/// use zen_websocket::recorder::metadata;
/// let path = std::env::temp_dir().join(format!("zen-doc-metadata-{}.jsonl", std::process::id()));
/// std::fs::write(&path, concat!(
///     r#"{"ts":"2026-12-02T00:31:07Z","dir":"sys","type":"connected","url":"wss://h/ws"}"#, "\n",
///     r#"{"ts":"2026-12-02T00:31:07.5Z","dir":"out","type":"text","data":"ping","conn":1}"#, "\n",
///     r#"{"ts":"2026-12-02T00:31:09Z","dir":"in","type":"text","data":"pong","conn":1}"#, "\n",
/// )).unwrap();
/// let meta = metadata(&path)?;
/// assert_eq!((meta.count, meta.inbound, meta.outbound, meta.lifecycle), (3, 1, 1, 1));
/// assert_eq!(meta.bytes, 8);
/// assert_eq!(meta.to_json()["duration_ms"], 2000);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), zen_websocket::Error>(())
/// ```
pub fn metadata(path: impl AsRef<Path>) -> Result<Metadata> {
    let path = path.as_ref();
    let mut lines = Lines::open(path)?;
    let mut meta = Metadata::default();
    while let Some(item) = lines.next_item().map_err(|e| Error::storage(path, e))? {
        match item {
            Ok(entry) => meta.add(&entry),
            Err(bad) => {
                meta.bad_lines.push(bad.line);
                meta.truncated_last_line |= bad.truncated;
            }
        }
    }
    if let (Some(first), Some(last)) = (meta.first_ts, meta.last_ts) {
        meta.duration = last.duration_since(first).unwrap_or_default();
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_display_their_number_and_truncation() {
        let bad = BadLine {
            line: 7,
            error: "not JSON".into(),
            truncated: true,
        };
        assert_eq!(bad.to_string(), "line 7: not JSON (truncated last line)");
    }

    #[test]
    fn metadata_of_nothing_is_empty_and_serializes() {
        let v = Metadata::default().to_json();
        assert_eq!(v["count"], 0);
        assert!(v["first_ts"].is_null());
        assert_eq!(v["duration_ms"], 0);
    }
}
