//! Session recording: every frame and lifecycle event of a connection as one
//! JSON line, written by a background thread, and read back for replay and
//! analysis.
//!
//! - [`Recorder`] owns one writer thread and every file opened through it;
//!   [`Recorder::global`] is the process-wide default used by
//!   `Config::record_to`. [`RecordFile`] is a cheap handle to one open file:
//!   [`RecordFile::record`] never touches the disk on the caller's thread.
//! - Entries are batched (by count or age), sorted by time stamp per batch,
//!   and appended; [`RecordFile::flush`] returning `Ok` means fsynced.
//!   Write errors are counted in [`FileStats`] and returned by the next flush.
//! - Credentials are removed by a [`Redactor`] before anything is encoded.
//! - [`Recording`], [`replay`], [`replay_timed`] and [`metadata`] read files
//!   back, streaming, and report bad or truncated lines instead of failing.
//! - [`entry`] is the line codec, pure and usable on its own; it also reads
//!   recordings of ZenWebsocket, the Elixir library this crate follows.
//!
//! The format, with an example of every line and analysis recipes (jq,
//! DuckDB), is described in `docs/recording-format.md`.
//!
//! ```
//! use zen_websocket::recorder::{self, Direction, EntryKind, OpenMode, Recorder};
//! let path = std::env::temp_dir().join(format!("zen-doc-module-{}.jsonl", std::process::id()));
//!
//! let file = Recorder::global()?.open(&path, OpenMode::Truncate)?;
//! file.record_lifecycle(EntryKind::Connected { url: "wss://example.com/ws?token=abc".into() }, Some(1));
//! file.record_text(Direction::Out, r#"{"method":"public/auth","params":{"client_secret":"xyz"}}"#, Some(1));
//! file.record_binary(Direction::In, &[0, 1, 2], Some(1));
//! file.record_close(Direction::In, Some(1000), "bye", Some(1));
//! file.flush()?;
//!
//! let meta = recorder::metadata(&path)?;
//! assert_eq!((meta.count, meta.inbound, meta.outbound, meta.lifecycle), (4, 2, 1, 1));
//! let mut types = Vec::new();
//! recorder::replay(&path, |e| types.push(e.kind.type_name()))?;
//! assert_eq!(types, ["connected", "text", "binary", "close"]);
//! assert!(!std::fs::read_to_string(&path).unwrap().contains("xyz"));
//! # drop(file);
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), zen_websocket::Error>(())
//! ```

pub mod cassette;
pub mod entry;
mod redact;
mod replay;
mod syncer;
mod timestamp;
mod writer;

pub use cassette::{
    Cassette, CassetteMode, CassetteSession, ReplayOptions, ReplayServer, Timing, CASSETTE_ENV,
};
pub use entry::{decode, encode, DecodeError, Direction, Entry, EntryKind};
pub use redact::{Redactor, DEFAULT_SENSITIVE_KEYS, REDACTED};
pub use replay::{metadata, replay, replay_timed, BadLine, Metadata, Recording, ReplaySummary};
pub use timestamp::{format_timestamp, parse_timestamp};
pub use writer::{
    flush_all_recorders, flush_on_ctrl_c, FileStats, OpenMode, Overflow, RecordFile, Recorder,
    RecorderConfig, RecorderStats,
};
