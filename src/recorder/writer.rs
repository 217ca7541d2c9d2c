//! The recorder: handles on the caller's side, and the writer thread that owns
//! every open file.
//!
//! Callers never touch the disk. [`RecordFile::record`] hands an [`Entry`] to
//! a bounded crossbeam channel; the writer thread (`zen-ws-recorder-N`) queues
//! entries per file, and writes a batch when a file has `batch_size` pending
//! entries or its oldest pending entry has waited `flush_interval`. Before a
//! batch is written it is sorted by `ts` (stable), so connections of a pool
//! recording into one file produce a chronological file. Requests that need
//! an answer (open, flush, commit, stop) travel the same channel, which is
//! what makes "entries recorded before the call" well defined: FIFO order.
//!
//! Under heavy traffic, full batches are joined into large page-aligned
//! writes ([`WRITE_CHUNK`]); what is left waits at most [`LINGER`]. The
//! writer yields its CPU between commands ([`give_way`]): it is background
//! work, and must not slow down the connections it records.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{
    bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError,
};
use parking_lot::{Mutex, RwLock};

use super::entry::{encode_burst_into, encode_into, Burst, Direction, Entry, EntryKind, TsCache};
use super::redact::Redactor;
use super::syncer::{SyncState, Syncer};
use crate::{ConfigError, Error, Result, TimeoutKind};

const LOG: &str = "zen_websocket";

/// What [`RecordFile::record`] does when the recorder's channel is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Wait until the writer has room: nothing is lost, the caller slows down.
    #[default]
    Block,
    /// Drop the entry and count it in [`FileStats::dropped`]; the caller never waits.
    DropAndCount,
}

/// How [`Recorder::open`] treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenMode {
    /// Append to the file, creating it if needed. An existing recording is never truncated.
    #[default]
    Append,
    /// Empty the file first (create it if needed).
    Truncate,
    /// Write a temporary file beside the target; [`RecordFile::commit`] renames
    /// it over the target. Until then (and if never committed) the old target
    /// stays as it was.
    ReplaceAtomically,
}

/// Settings of a [`Recorder`].
///
/// Marked `#[non_exhaustive]`: start from the default and set fields.
///
/// ```
/// use std::time::Duration;
/// use zen_websocket::recorder::{Overflow, RecorderConfig};
/// let mut config = RecorderConfig::default();
/// config.flush_interval = Duration::from_millis(20);
/// config.overflow = Overflow::DropAndCount;
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecorderConfig {
    /// A file's pending entries are sorted and written once this many have
    /// queued. Defaults to 256. Under heavy traffic, full batches are joined
    /// into writes of 256 KiB or more; what is left waits 2 ms for more
    /// (and the last part of a page, 2 ms again).
    pub batch_size: usize,
    /// ...or once the oldest pending entry has waited this long. Defaults to 100 ms.
    pub flush_interval: Duration,
    /// Capacity of the channel to the writer thread, shared by all files. Defaults to 8192.
    pub channel_capacity: usize,
    /// What `record` does when the channel is full. Defaults to [`Overflow::Block`].
    pub overflow: Overflow,
    /// Applied to every entry before it is encoded. Defaults to [`Redactor::default`].
    pub redactor: Redactor,
    /// How long open, flush, commit and stop wait for the writer thread before
    /// returning [`Error::Timeout`] with [`TimeoutKind::Wait`]. Defaults to 30 s.
    pub flush_timeout: Duration,
    /// Once this many bytes were written to a file since it was last synced,
    /// a helper thread fsyncs it in the background, so a fast recording
    /// reaches the disk as it goes and a flush waits only for the rest
    /// (instead of for everything the page cache piled up). 0 turns it off.
    /// Defaults to 64 MiB.
    pub background_sync_bytes: u64,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            batch_size: 256,
            flush_interval: Duration::from_millis(100),
            channel_capacity: 8192,
            overflow: Overflow::Block,
            redactor: Redactor::default(),
            flush_timeout: Duration::from_secs(30),
            background_sync_bytes: 64 << 20,
        }
    }
}

impl RecorderConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        let rule = |field, rule: &str| Err(Error::Config(ConfigError::new(field, rule)));
        if self.batch_size == 0 {
            return rule("batch_size", "must be at least 1");
        }
        if self.flush_interval.is_zero() {
            return rule("flush_interval", "must be greater than zero");
        }
        if self.channel_capacity == 0 {
            return rule("channel_capacity", "must be at least 1");
        }
        if self.flush_timeout.is_zero() {
            return rule("flush_timeout", "must be greater than zero");
        }
        Ok(())
    }
}

/// Counters of one file, or of a whole recorder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Entries written to the file.
    pub entries: u64,
    /// Bytes written to the file.
    pub bytes: u64,
    /// Entries that could not be written (a failed write), plus one per failed fsync.
    pub write_errors: u64,
    /// Entries dropped: the channel was full under [`Overflow::DropAndCount`],
    /// or they were recorded after the recorder stopped.
    pub dropped: u64,
}

/// Counters of a [`Recorder`]: the total since it started, and each open file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Every file, including files already closed.
    pub total: FileStats,
    /// The files open now, by path.
    pub files: Vec<(PathBuf, FileStats)>,
}

/// Atomic counters behind [`FileStats`]; relaxed ordering is enough for statistics.
#[derive(Debug, Default)]
struct Counters {
    entries: AtomicU64,
    bytes: AtomicU64,
    write_errors: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> FileStats {
        FileStats {
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Statistics shared by the writer thread and the handles.
#[derive(Debug, Default)]
struct Stats {
    total: Counters,
    /// The open files by id. Written by the writer thread on open and close.
    files: Mutex<BTreeMap<u64, (PathBuf, Arc<Counters>)>>,
}

/// The caller side of the channel, shared by a recorder and all its file handles.
///
/// The sender sits behind a read-write lock that works as a gate: sends take
/// the read lock, and `stop` takes the write lock to remove the sender before
/// it sends `Stop`. So nothing can be queued behind `Stop`, and every entry is
/// either written or counted as dropped, never silently lost.
///
/// Lock order: `Inner::thread`, then `tx`. Nothing else is locked while `tx`
/// is held, a holder never takes `tx` again (a queued writer would deadlock a
/// second read), and the writer thread never takes it at all, so senders
/// blocked on a full channel always drain.
#[derive(Debug)]
struct Link {
    tx: RwLock<Option<Sender<Cmd>>>,
    overflow: Overflow,
    timeout: Duration,
    stats: Arc<Stats>,
    /// Emptied bursts on their way back from the writer, for reuse.
    spare: Receiver<Burst>,
}

impl Link {
    /// Sends a request and waits for its answer, both within the configured timeout.
    fn request<T>(
        &self,
        path: Option<&Path>,
        make: impl FnOnce(Sender<Result<T>>) -> Cmd,
    ) -> Result<T> {
        let (reply_tx, reply_rx) = bounded(1);
        let deadline = Instant::now().checked_add(self.timeout);
        {
            let guard = self.tx.read();
            let Some(tx) = guard.as_ref() else {
                return Err(stopped(path));
            };
            let cmd = make(reply_tx);
            let sent = match deadline {
                Some(d) => tx.send_deadline(cmd, d),
                None => tx
                    .send(cmd)
                    .map_err(|e| SendTimeoutError::Disconnected(e.0)),
            };
            match sent {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(_)) => return Err(Error::Timeout(TimeoutKind::Wait)),
                Err(SendTimeoutError::Disconnected(_)) => return Err(stopped(path)),
            }
        }
        let answer = match deadline {
            Some(d) => reply_rx.recv_deadline(d),
            None => reply_rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match answer {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout(TimeoutKind::Wait)),
            Err(RecvTimeoutError::Disconnected) => Err(stopped(path)),
        }
    }
}

/// The error for a request to a stopped recorder.
fn stopped(path: Option<&Path>) -> Error {
    Error::storage(
        path.unwrap_or(Path::new("")),
        io::Error::new(io::ErrorKind::BrokenPipe, RecorderStopped),
    )
}

/// Marks [`stopped`] errors, so `flush_all` can tell them from a real EPIPE.
#[derive(Debug)]
struct RecorderStopped;

impl std::fmt::Display for RecorderStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the recorder is stopped")
    }
}

impl std::error::Error for RecorderStopped {}

fn is_stopped_error(e: &Error) -> bool {
    matches!(e, Error::Storage { source, .. }
        if source.get_ref().is_some_and(|inner| inner.is::<RecorderStopped>()))
}

/// What travels to the writer thread.
enum Cmd {
    Entry {
        file: u64,
        entry: Entry,
    },
    /// Many entries in one hand-over: a connection records a whole read burst
    /// with one channel operation instead of one per frame.
    Entries {
        file: u64,
        items: Vec<Pending>,
        count: usize,
    },
    /// A connection's read burst in flat buffers (see [`Burst`]).
    Burst {
        file: u64,
        burst: Burst,
    },
    Open {
        path: PathBuf,
        mode: OpenMode,
        reply: Sender<Result<Opened>>,
    },
    Flush {
        file: FlushTarget,
        reply: Sender<Result<()>>,
    },
    Commit {
        file: u64,
        reply: Sender<Result<()>>,
    },
    /// The last handle of one `open` call was dropped.
    Release {
        file: u64,
    },
    Stop {
        reply: Sender<Result<()>>,
    },
}

enum FlushTarget {
    One(u64),
    Path(PathBuf),
    All,
}

struct Opened {
    id: u64,
    path: PathBuf,
    counters: Arc<Counters>,
}

/// Shared by every clone of one `Recorder`; dropping it stops the thread.
struct Inner {
    link: Arc<Link>,
    /// Also serializes `stop`: a second caller waits until the first has joined.
    thread: Mutex<Option<JoinHandle<()>>>,
    name: String,
}

impl Inner {
    fn stop(&self) -> Result<()> {
        let mut thread = self.thread.lock();
        // Taking the sender under the write lock closes the gate (see `Link`).
        let Some(tx) = self.link.tx.write().take() else {
            return Ok(());
        };
        let (reply_tx, reply_rx) = bounded(1);
        let timeout = self.link.timeout;
        let result = match tx.send_timeout(Cmd::Stop { reply: reply_tx }, timeout) {
            Ok(()) => match reply_rx.recv_timeout(timeout) {
                Ok(result) => Some(result),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Err(thread_died())),
            },
            Err(SendTimeoutError::Timeout(_)) => None,
            Err(SendTimeoutError::Disconnected(_)) => Some(Err(thread_died())),
        };
        drop(tx);
        match result {
            Some(result) => {
                if let Some(handle) = thread.take() {
                    if handle.join().is_err() {
                        log::error!(target: LOG, "{} panicked", self.name);
                    }
                }
                log::debug!(target: LOG, "{} stopped", self.name);
                result
            }
            None => {
                // The thread is stuck in I/O (a hung disk); it exits by itself once
                // the I/O returns, because it is already processing `Stop` or will
                // find the channel disconnected. Joining here would hang the caller.
                log::warn!(target: LOG, "{} did not stop within {timeout:?}", self.name);
                Err(Error::Timeout(TimeoutKind::Wait))
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::warn!(target: LOG, "stopping {} on drop: {e}", self.name);
        }
    }
}

fn thread_died() -> Error {
    Error::io(
        "recording",
        io::Error::other("the recorder thread ended unexpectedly"),
    )
}

/// Every live recorder, for [`flush_all_recorders`]. Weak, so the registry
/// never keeps a recorder (and its thread) alive.
static REGISTRY: Mutex<Vec<Weak<Inner>>> = parking_lot::const_mutex(Vec::new());
static GLOBAL: OnceLock<Mutex<Option<Recorder>>> = OnceLock::new();
static THREAD_NUMBER: AtomicU64 = AtomicU64::new(1);
static CTRL_C_INSTALLED: AtomicBool = AtomicBool::new(false);
/// Numbers temporary files, so two recorders replacing one target never collide.
static TEMP_NUMBER: AtomicU64 = AtomicU64::new(1);

/// A handle to one writer thread that owns every file opened through it.
///
/// Clones are cheap and share the thread. The thread stops when [`stop`] is
/// called or the last clone is dropped (both flush, fsync and close every
/// file, then join the thread). Open [`RecordFile`]s do not keep it running.
///
/// [`stop`]: Recorder::stop
///
/// ```
/// use zen_websocket::recorder::{self, Direction, OpenMode, Recorder, RecorderConfig};
/// let path = std::env::temp_dir().join(format!("zen-doc-recorder-{}.jsonl", std::process::id()));
///
/// let recorder = Recorder::start(RecorderConfig::default())?;
/// let file = recorder.open(&path, OpenMode::Truncate)?;
/// file.record_text(Direction::Out, r#"{"op":"subscribe","token":"s3cret"}"#, None);
/// file.record_text(Direction::In, r#"{"ok":true}"#, None);
/// file.flush()?; // both entries are on disk (fsynced) now
/// assert_eq!(file.stats().entries, 2);
/// recorder.stop()?;
///
/// let on_disk = std::fs::read_to_string(&path).unwrap();
/// assert!(!on_disk.contains("s3cret"));
/// assert_eq!(recorder::metadata(&path)?.outbound, 1);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), zen_websocket::Error>(())
/// ```
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("thread", &self.inner.name)
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl Recorder {
    /// Starts a writer thread with `config` (validated first).
    pub fn start(config: RecorderConfig) -> Result<Recorder> {
        Recorder::launch(config, write_counting)
    }

    /// [`Recorder::start`] with the function that writes to files (tests
    /// inject failures through it).
    fn launch(config: RecorderConfig, write: WriteFn) -> Result<Recorder> {
        config.validate()?;
        let (tx, rx) = bounded(config.channel_capacity);
        let (spare_tx, spare_rx) = bounded(SPARE_BURSTS);
        let stats = Arc::new(Stats::default());
        let name = format!(
            "zen-ws-recorder-{}",
            THREAD_NUMBER.fetch_add(1, Ordering::Relaxed)
        );
        let writer = Writer {
            rx,
            batch_size: config.batch_size,
            interval: config.flush_interval,
            redactor: config.redactor,
            stats: Arc::clone(&stats),
            spare: spare_tx,
            files: HashMap::new(),
            by_path: HashMap::new(),
            deadlines: VecDeque::new(),
            lingers: VecDeque::new(),
            linger: config.flush_interval.min(LINGER),
            next_id: 1,
            syncer: Syncer::new(format!("{name}-sync"), sync),
            background_sync_bytes: config.background_sync_bytes,
            write,
        };
        let handle = thread::Builder::new()
            .name(name.clone())
            .spawn(move || writer.run())
            .map_err(|e| Error::io("spawning the recorder thread", e))?;
        let inner = Arc::new(Inner {
            link: Arc::new(Link {
                tx: RwLock::new(Some(tx)),
                overflow: config.overflow,
                timeout: config.flush_timeout,
                stats,
                spare: spare_rx,
            }),
            thread: Mutex::new(Some(handle)),
            name,
        });
        let mut registry = REGISTRY.lock();
        registry.retain(|w| w.strong_count() > 0);
        registry.push(Arc::downgrade(&inner));
        drop(registry);
        log::debug!(target: LOG, "{} started", inner.name);
        Ok(Recorder { inner })
    }

    /// The process-wide default recorder (default config), started on first
    /// use, and started again if someone stopped it. `Config::record_to` records
    /// through it.
    ///
    /// It lives in a static and is never dropped, so it never stops by itself:
    /// entries still queued when the process exits are lost unless their files
    /// were flushed or closed (dropping a file's last handle writes and fsyncs
    /// it), or [`flush_all_recorders`] ran (see also [`flush_on_ctrl_c`]).
    pub fn global() -> Result<Recorder> {
        let mut global = GLOBAL.get_or_init(|| Mutex::new(None)).lock();
        if let Some(r) = global.as_ref().filter(|r| !r.is_stopped()) {
            return Ok(r.clone());
        }
        let r = Recorder::start(RecorderConfig::default())?;
        *global = Some(r.clone());
        Ok(r)
    }

    /// Opens `path` in the writer thread and waits for the outcome, so a missing
    /// directory or a permission problem is an [`Error::Storage`] naming the path.
    ///
    /// Opening a path that is already open in this recorder shares that file
    /// (the new handle behaves like a clone of the first), whatever spelling
    /// of the path was used; it must be opened with the same mode, else the
    /// error is [`Error::Config`] naming `mode`. The file closes (after a final
    /// write and fsync) when the last handle of every `open` call is dropped.
    pub fn open(&self, path: impl AsRef<Path>, mode: OpenMode) -> Result<RecordFile> {
        let path = path.as_ref();
        let link = &self.inner.link;
        let opened = link.request(Some(path), |reply| Cmd::Open {
            path: path.to_path_buf(),
            mode,
            reply,
        })?;
        Ok(RecordFile {
            inner: Arc::new(FileHandle {
                id: opened.id,
                path: opened.path,
                link: Arc::clone(link),
                counters: opened.counters,
            }),
        })
    }

    /// Blocks until every entry recorded to `path` before the call is written
    /// and fsynced. Returns the first write error of that file since its last
    /// flush. A path that is not open here has nothing pending: `Ok`. After
    /// [`stop`](Recorder::stop), an error.
    pub fn flush(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let Ok(key) = file_key(path) else {
            // Its directory does not exist, so nothing can be open there.
            return Ok(());
        };
        self.inner.link.request(Some(path), |reply| Cmd::Flush {
            file: FlushTarget::Path(key),
            reply,
        })
    }

    /// [`flush`](Recorder::flush) for every open file; returns the first error
    /// (the errors of other files are logged). After [`stop`](Recorder::stop)
    /// nothing is pending and this returns `Ok`.
    pub fn flush_all(&self) -> Result<()> {
        match self.inner.link.request(None, |reply| Cmd::Flush {
            file: FlushTarget::All,
            reply,
        }) {
            Err(e) if is_stopped_error(&e) => Ok(()),
            other => other,
        }
    }

    /// Counters: totals since start (closed files included) and each open file.
    pub fn stats(&self) -> RecorderStats {
        let stats = &self.inner.link.stats;
        let files = stats
            .files
            .lock()
            .values()
            .map(|(path, c)| (path.clone(), c.snapshot()))
            .collect();
        RecorderStats {
            total: stats.total.snapshot(),
            files,
        }
    }

    /// Writes, fsyncs and closes every file (an uncommitted
    /// [`OpenMode::ReplaceAtomically`] file is abandoned: its temporary file is
    /// removed), then joins the thread. Returns the first write error not yet
    /// reported by a flush. Idempotent. Afterwards `record` counts entries as
    /// dropped and `open` fails.
    pub fn stop(&self) -> Result<()> {
        self.inner.stop()
    }

    /// True once the recorder has been stopped.
    pub fn is_stopped(&self) -> bool {
        self.inner.link.tx.read().is_none()
    }
}

/// Flushes every live [`Recorder`] of the process; returns the first error.
///
/// Call it before the process exits: a recorder held in a static (like
/// [`Recorder::global`]) is never dropped, so it is never stopped either.
pub fn flush_all_recorders() -> Result<()> {
    // Upgrade under the lock, flush without it: a flush can take a while.
    let live: Vec<Recorder> = REGISTRY
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .map(|inner| Recorder { inner })
        .collect();
    let mut first = None;
    for r in &live {
        if let Err(e) = r.flush_all() {
            log::warn!(target: LOG, "flushing {}: {e}", r.inner.name);
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Installs a Ctrl-C (SIGINT) handler, with the `ctrlc` crate, that
/// flushes every recorder ([`flush_all_recorders`]) and then exits the process
/// with status 130, the shell convention for "interrupted".
///
/// Without it, Ctrl-C kills the process with up to `flush_interval` of
/// entries still queued. The handler replaces the default action, so install
/// it only in a program that has no Ctrl-C handling of its own. Calling this
/// again is a no-op. If another handler was installed with the `ctrlc` crate,
/// this returns [`Error::Config`] naming `flush_on_ctrl_c`.
pub fn flush_on_ctrl_c() -> Result<()> {
    if CTRL_C_INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let installed = ctrlc::set_handler(|| {
        if let Err(e) = flush_all_recorders() {
            log::error!(target: LOG, "flushing recordings on Ctrl-C: {e}");
        }
        std::process::exit(130);
    });
    match installed {
        Ok(()) => Ok(()),
        Err(e) => {
            CTRL_C_INSTALLED.store(false, Ordering::SeqCst);
            Err(match e {
                ctrlc::Error::MultipleHandlers => Error::Config(ConfigError::new(
                    "flush_on_ctrl_c",
                    "another Ctrl-C handler is already installed",
                )),
                other => Error::io(
                    "installing the Ctrl-C handler",
                    io::Error::other(other.to_string()),
                ),
            })
        }
    }
}

/// A handle to one open recording file. Cheap to clone, `Send + Sync`.
///
/// `record` never does disk I/O: it hands the entry to the writer thread.
#[derive(Clone)]
pub struct RecordFile {
    inner: Arc<FileHandle>,
}

struct FileHandle {
    id: u64,
    path: PathBuf,
    link: Arc<Link>,
    counters: Arc<Counters>,
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        let guard = self.link.tx.read();
        if let Some(tx) = guard.as_ref() {
            // Blocking (bounded) even under DropAndCount: losing a release would
            // keep the file open until the recorder stops.
            if tx
                .send_timeout(Cmd::Release { file: self.id }, self.link.timeout)
                .is_err()
            {
                log::warn!(target: LOG, "could not release {}", self.path.display());
            }
        }
    }
}

impl std::fmt::Debug for RecordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordFile")
            .field("path", &self.inner.path)
            .field("stats", &self.stats())
            .finish()
    }
}

impl RecordFile {
    /// Queues `entry` for writing. Under [`Overflow::Block`] waits while the
    /// channel is full; under [`Overflow::DropAndCount`] drops and counts
    /// instead. After the recorder stopped, the entry is counted as dropped.
    pub fn record(&self, entry: Entry) {
        self.hand_over(1, |file| Cmd::Entry { file, entry });
    }

    /// Records many entries with one hand-over to the writer (cheaper than one
    /// [`record`](Self::record) each); same blocking and dropping rules.
    pub fn record_batch(&self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let (items, count) = pack(entries);
        self.hand_over(count as u64, |file| Cmd::Entries { file, items, count });
    }

    /// An empty burst for `record_burst`, reusing the buffers of one already
    /// written when there is one.
    pub(crate) fn new_burst(
        &self,
        ts: std::time::SystemTime,
        dir: Direction,
        conn: Option<u64>,
        room: (usize, usize, usize),
    ) -> Burst {
        let mut burst = self.inner.link.spare.try_recv().unwrap_or_default();
        burst.reuse(ts, dir, conn, room);
        burst
    }

    /// Records a read burst with one hand-over; same blocking and dropping rules.
    pub(crate) fn record_burst(&self, burst: Burst) {
        if burst.is_empty() {
            return;
        }
        self.hand_over(burst.len() as u64, |file| Cmd::Burst { file, burst });
    }

    /// Sends the command `make` builds for `n` entries, under the overflow
    /// policy; what cannot be sent is counted as dropped.
    fn hand_over(&self, n: u64, make: impl FnOnce(u64) -> Cmd) {
        let h = &*self.inner;
        let sent = {
            let guard = h.link.tx.read();
            match guard.as_ref() {
                None => false,
                Some(tx) => {
                    let cmd = make(h.id);
                    match h.link.overflow {
                        Overflow::Block => tx.send(cmd).is_ok(),
                        Overflow::DropAndCount => tx.try_send(cmd).is_ok(),
                    }
                }
            }
        };
        if !sent {
            add(&h.counters.dropped, n);
            add(&h.link.stats.total.dropped, n);
        }
    }

    /// Records a text frame stamped now.
    pub fn record_text(&self, dir: Direction, text: &str, conn: Option<u64>) {
        self.record(Entry::text(dir, text, conn));
    }

    /// Records a binary frame stamped now.
    pub fn record_binary(&self, dir: Direction, data: &[u8], conn: Option<u64>) {
        self.record(Entry::binary(dir, data, conn));
    }

    /// Records a close frame stamped now.
    pub fn record_close(&self, dir: Direction, code: Option<u16>, reason: &str, conn: Option<u64>) {
        self.record(Entry::close(dir, code, reason, conn));
    }

    /// Records a lifecycle event ([`Direction::Internal`]) stamped now.
    pub fn record_lifecycle(&self, kind: EntryKind, conn: Option<u64>) {
        self.record(Entry::lifecycle(kind, conn));
    }

    /// Blocks until every entry recorded before the call is written and
    /// fsynced; returns the first write error since the last flush. `Ok` means
    /// on disk. After the recorder stopped, this is an error.
    pub fn flush(&self) -> Result<()> {
        let h = &*self.inner;
        h.link.request(Some(&h.path), |reply| Cmd::Flush {
            file: FlushTarget::One(h.id),
            reply,
        })
    }

    /// For [`OpenMode::ReplaceAtomically`]: flushes and fsyncs the temporary
    /// file, renames it over the target and fsyncs the directory. Refused (the
    /// target left unchanged) if any write to the temporary file failed. Later
    /// entries are appended to the new target, and `commit` again is a flush.
    /// For the other modes, the same as [`flush`](RecordFile::flush).
    pub fn commit(&self) -> Result<()> {
        let h = &*self.inner;
        h.link
            .request(Some(&h.path), |reply| Cmd::Commit { file: h.id, reply })
    }

    /// The file's absolute path (the target, for `ReplaceAtomically`).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// This file's counters.
    pub fn stats(&self) -> FileStats {
        self.inner.counters.snapshot()
    }
}

/// The identity of a file: its canonical path if it exists, else the
/// canonical directory joined with the file name.
fn file_key(path: &Path) -> io::Result<PathBuf> {
    match fs::canonicalize(path) {
        Ok(p) => return Ok(p),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok(fs::canonicalize(dir)?.join(name))
}

/// fsync that tolerates files which cannot be synced: pipes, FIFOs and
/// character devices answer EINVAL, which means "nothing to sync", not failure.
fn sync(file: &File) -> io::Result<()> {
    match file.sync_data() {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}

/// The output buffer an idle file keeps (see [`Writer::write_batch`]).
const OUT_KEPT: usize = 64 << 10;

/// The length of `file` when it is a regular file (the only kind a failed
/// write can be cut back in, or writes aligned to).
fn regular_len(file: &File) -> Option<u64> {
    file.metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// How many written bursts wait for reuse, per recorder (a few hundred KiB).
const SPARE_BURSTS: usize = 16;

/// What waits in a file's batch: one entry, or a whole read burst.
enum Pending {
    One(Entry),
    Burst(Burst),
}

impl Pending {
    fn ts(&self) -> std::time::SystemTime {
        match self {
            Pending::One(e) => e.ts,
            Pending::Burst(b) => b.ts,
        }
    }

    fn len(&self) -> usize {
        match self {
            Pending::One(_) => 1,
            Pending::Burst(b) => b.len(),
        }
    }
}

/// Packs the frames of `entries` that share a stamp, direction and connection
/// into bursts, on the caller's thread: the writer then reads contiguous
/// memory and frees a few buffers instead of one string per entry (which, for
/// small frames, is most of what an entry costs it). Returns the items and
/// how many entries they hold.
fn pack(entries: Vec<Entry>) -> (Vec<Pending>, usize) {
    let count = entries.len();
    // Room for everything in the first burst: a batch is usually one burst.
    let (text, binary) = entries.iter().fold((0, 0), |(t, b), e| match &e.kind {
        EntryKind::Text(s) => (t + s.len(), b),
        EntryKind::Binary(v) => (t, b + v.len()),
        _ => (t, b),
    });
    let mut room = (count, text, binary);
    let mut items = Vec::new();
    let mut burst: Option<Burst> = None;
    for entry in entries {
        let frame = matches!(entry.kind, EntryKind::Text(_) | EntryKind::Binary(_));
        let same = burst
            .as_ref()
            .is_some_and(|b| b.ts == entry.ts && b.dir == entry.dir && b.conn == entry.conn);
        if !frame || !same {
            items.extend(burst.take().map(Pending::Burst));
        }
        if !frame {
            items.push(Pending::One(entry));
            continue;
        }
        let b = burst.get_or_insert_with(|| {
            Burst::new(entry.ts, entry.dir, entry.conn, mem::take(&mut room))
        });
        match entry.kind {
            EntryKind::Binary(data) => b.push_binary(&data),
            EntryKind::Text(t) => b.push_text(&t),
            _ => {}
        }
    }
    items.extend(burst.map(Pending::Burst));
    (items, count)
}

/// One open file, owned by the writer thread.
struct OpenFile {
    path: PathBuf,
    /// Shared only with the background syncer, for the length of one fsync.
    file: Arc<File>,
    /// Bytes written since the file was last synced (or handed to the syncer).
    unsynced: u64,
    sync_state: Arc<SyncState>,
    /// The temporary file while an `ReplaceAtomically` file is not committed.
    temp: Option<PathBuf>,
    mode: OpenMode,
    pending: Vec<Pending>,
    /// How many entries `pending` holds (a burst holds many).
    pending_entries: usize,
    /// Bumped whenever `pending` goes from empty to non-empty, to tell a
    /// current deadline from a stale one.
    generation: u64,
    /// How many `open` calls hold handles to this file.
    handles: usize,
    /// The first write error since the last flush.
    error: Option<io::Error>,
    /// Any write failed since open: an incomplete file must not be committed.
    ever_failed: bool,
    /// A failed write may have left a partial line that could not be cut off:
    /// start the next write on a fresh line so only that line is bad.
    needs_newline: bool,
    counters: Arc<Counters>,
    /// Encoded lines not yet handed to the OS (see [`WRITE_CHUNK`]).
    out: String,
    /// The batches `out` holds (at least partly), oldest first.
    out_batches: VecDeque<OutBatch>,
    /// Bytes taken from `out` by successful writes, counted from the last
    /// time `out` was emptied by an error (an origin for `OutBatch::end`).
    written: u64,
    /// Where the last batch written whole ends, on the same count.
    complete: u64,
    /// A linger is queued for what a size-triggered write left in `out`.
    lingering: bool,
    /// The file offset the next write lands at, for a regular file: what
    /// [`write_len`] aligns to. `None` for anything else (a pipe, a device).
    pos: Option<u64>,
}

/// A batch in a file's output buffer: its entries are counted as written
/// once every byte up to `end` is.
struct OutBatch {
    end: u64,
    entries: u64,
    /// The batch's generation: its arrival deadline stays current until it
    /// is written (see [`Writer::next_deadline`]).
    generation: u64,
}

/// Output is handed to the OS in writes of at least this many bytes while
/// full batches keep coming (and whatever waits when a linger, a deadline, a
/// flush or a close says so).
///
/// Why: the kernel's buffered write is half or more of the writer's CPU,
/// and it costs less per byte in large writes that end on a page boundary.
/// Measured here (ext4, 2 cores): `dd` of 362 MB in 46 KB unaligned writes
/// (one 256-entry batch of 100-byte frames) takes 0.24-0.26 s of system
/// time, in 256 KiB aligned writes 0.14-0.15 s; the recorder bench's writer
/// went from 1.8-1.9 to 2.4-2.8 M entries/s, and in its flood the writer
/// thread's CPU fell by 17 % (30 rounds each way).
const WRITE_CHUNK: usize = 256 << 10;

/// How long the output of a full batch may wait for more, to be written in
/// one large write: under a flood, 2 ms bring about 900 KB, so most writes
/// are whole [`WRITE_CHUNK`]s; when traffic is slower, a full batch still
/// reaches the file within 2 ms, all but the part of a page at its end,
/// which goes one linger later (with whatever has joined it).
const LINGER: Duration = Duration::from_millis(2);

/// The page size writes are aligned to.
const PAGE: u64 = 4096;

/// How much of a file's output buffer a write takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// All of it (a deadline, a flush, a close).
    All,
    /// Nothing below [`WRITE_CHUNK`]; above it, whole pages (a full batch).
    Chunks,
    /// Whole pages, or all of it when that is under two pages (a linger: a
    /// tail of less than a page waits for the next write).
    Pages,
}

/// How much of `out` to write now, as `take` says. A cut ends on a page
/// boundary of the file (`pos` is where the write starts, when known),
/// moved back to a character boundary so that the rest stays a `String`.
fn write_len(pos: Option<u64>, out: &str, take: Take) -> usize {
    let len = out.len();
    let least = match take {
        Take::All => return len,
        Take::Chunks if len < WRITE_CHUNK => return 0,
        Take::Chunks => WRITE_CHUNK,
        Take::Pages => 2 * PAGE as usize,
    };
    let Some(pos) = pos.filter(|_| len >= least) else {
        return len;
    };
    // `len >= 2 * PAGE`, so the cut is well inside `out`.
    let mut cut = len - (pos.wrapping_add(len as u64) % PAGE) as usize;
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

/// How the writer writes to a file: all of `buf`, or how much went out
/// before an error.
type WriteFn = fn(&File, &[u8]) -> (u64, io::Result<()>);

/// `write_all`, but says how many bytes went out before an error, so a
/// failed write can be cut back to the last whole line.
fn write_counting(mut file: &File, mut buf: &[u8]) -> (u64, io::Result<()>) {
    let mut done = 0u64;
    while !buf.is_empty() {
        match file.write(buf) {
            Ok(0) => return (done, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                done += n as u64;
                buf = buf.get(n..).unwrap_or_default();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

struct Writer {
    rx: Receiver<Cmd>,
    batch_size: usize,
    interval: Duration,
    redactor: Redactor,
    stats: Arc<Stats>,
    /// Where written bursts go back to the connections (see [`SPARE_BURSTS`]).
    spare: Sender<Burst>,
    files: HashMap<u64, OpenFile>,
    by_path: HashMap<PathBuf, u64>,
    /// (deadline, file, generation), in deadline order: every deadline is
    /// "arrival + interval" and arrivals are in time order, so a queue suffices.
    deadlines: VecDeque<(Instant, u64, u64)>,
    /// (when, file): when what a full batch left unwritten must go out. All
    /// are "then + linger", so again a queue suffices.
    lingers: VecDeque<(Instant, u64)>,
    /// How long output of a full batch may wait for more to join its write:
    /// [`LINGER`], or `flush_interval` when that is shorter.
    linger: Duration,
    next_id: u64,
    syncer: Syncer,
    background_sync_bytes: u64,
    write: WriteFn,
}

/// Lets any thread waiting for this CPU run first: called after each command
/// that carried entries and before each write.
///
/// Why: recording is background work, and it must not slow down what it
/// records. On a machine with few cores the writer otherwise takes whole
/// time slices from the connection threads and from the application thread
/// that reads their events; a reader held off for a slice lets its
/// connection's event queue fill, and then the connection waits too. A
/// yield comes close to what a lower OS priority would give, without
/// privileges, `unsafe` or another crate, for one cheap system call (it
/// returns at once when no one is waiting). Measured in the recorder bench's
/// flood on 2 cores, 30 interleaved rounds each way: the median on/off ratio
/// rose from 0.79 to 0.86 (0.81 to 0.86 without output coalescing), and from
/// 0.81 to 0.87 with the yield before writes added, for no more writer CPU.
fn give_way() {
    thread::yield_now();
}

impl Writer {
    fn run(mut self) {
        loop {
            let received = match self.next_wake() {
                Some(deadline) => match self.rx.recv_deadline(deadline) {
                    Ok(cmd) => Some(cmd),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(cmd) => Some(cmd),
                    Err(_) => break,
                },
            };
            if let Some(cmd) = received {
                let carried_entries = matches!(
                    cmd,
                    Cmd::Entry { .. } | Cmd::Entries { .. } | Cmd::Burst { .. }
                );
                if let Some(reply) = self.handle(cmd) {
                    let result = self.close_all();
                    self.drain_after_stop();
                    let _ = reply.send(result);
                    return;
                }
                if carried_entries {
                    give_way();
                }
            }
            self.write_due(Instant::now());
        }
        // Every sender is gone without a `Stop`: close as stop would.
        if let Err(e) = self.close_all() {
            log::warn!(target: LOG, "closing recordings: {e}");
        }
    }

    /// Handles one command; returns the reply channel of a `Stop`.
    fn handle(&mut self, cmd: Cmd) -> Option<Sender<Result<()>>> {
        match cmd {
            Cmd::Entry { file, entry } => self.queue(file, Pending::One(entry)),
            Cmd::Entries { file, items, .. } => {
                for item in items {
                    self.queue(file, item);
                }
            }
            Cmd::Burst { file, burst } => self.queue(file, Pending::Burst(burst)),
            Cmd::Open { path, mode, reply } => {
                let _ = reply.send(self.open(&path, mode));
            }
            Cmd::Flush { file, reply } => {
                let result = match file {
                    FlushTarget::One(id) => self.flush(id),
                    FlushTarget::Path(key) => match self.by_path.get(&key) {
                        Some(&id) => self.flush(id),
                        None => Ok(()),
                    },
                    FlushTarget::All => self.flush_every(),
                };
                let _ = reply.send(result);
            }
            Cmd::Commit { file, reply } => {
                let _ = reply.send(self.commit(file));
            }
            Cmd::Release { file } => self.release(file),
            Cmd::Stop { reply } => return Some(reply),
        }
        None
    }

    fn queue(&mut self, id: u64, item: Pending) {
        let Some(f) = self.files.get_mut(&id) else {
            // Cannot happen while a handle exists (its release comes after its
            // entries); count it rather than lose it silently.
            add(&self.stats.total.dropped, item.len() as u64);
            return;
        };
        if f.pending.is_empty() {
            f.generation += 1;
            // A flush_interval too large for Instant means "no time trigger".
            if let Some(deadline) = Instant::now().checked_add(self.interval) {
                self.deadlines.push_back((deadline, id, f.generation));
            }
        }
        f.pending_entries += item.len();
        f.pending.push(item);
        if f.pending_entries >= self.batch_size {
            self.write_batch(id, Take::Chunks);
        }
    }

    /// The earliest deadline that is still current; stale ones are discarded.
    /// A deadline is current while its batch waits, queued or encoded.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(deadline, id, generation)) = self.deadlines.front() {
            let current = self.files.get(&id).is_some_and(|f| {
                (!f.pending.is_empty() && f.generation == generation)
                    || f.out_batches
                        .front()
                        .is_some_and(|b| b.generation == generation)
            });
            if current {
                return Some(deadline);
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// When the writer must next wake up: the earliest current deadline or
    /// linger.
    fn next_wake(&mut self) -> Option<Instant> {
        let linger = self.lingers.front().map(|&(at, _)| at);
        match (self.next_deadline(), linger) {
            (Some(d), Some(l)) => Some(d.min(l)),
            (d, l) => d.or(l),
        }
    }

    fn write_due(&mut self, now: Instant) {
        while let Some(deadline) = self.next_deadline() {
            if deadline > now {
                break;
            }
            if let Some((_, id, _)) = self.deadlines.pop_front() {
                self.write_batch(id, Take::All);
            }
        }
        while let Some(&(at, id)) = self.lingers.front() {
            if at > now {
                break;
            }
            self.lingers.pop_front();
            if let Some(f) = self.files.get_mut(&id) {
                f.lingering = false;
                if !f.out.is_empty() {
                    // Only what is encoded: entries still pending keep
                    // their batch (its window to sort by `ts`) and deadline.
                    self.write_out(id, Take::Pages);
                }
            }
        }
    }

    fn open(&mut self, path: &Path, mode: OpenMode) -> Result<Opened> {
        let key = file_key(path).map_err(|e| Error::storage(path, e))?;
        if let Some(&id) = self.by_path.get(&key) {
            if let Some(f) = self.files.get_mut(&id) {
                if f.mode != mode {
                    return Err(Error::Config(ConfigError::new(
                        "mode",
                        format!(
                            "{} is already open with {:?}, not {mode:?}",
                            key.display(),
                            f.mode
                        ),
                    )));
                }
                f.handles += 1;
                return Ok(Opened {
                    id,
                    path: key,
                    counters: Arc::clone(&f.counters),
                });
            }
        }
        let id = self.next_id;
        let (file, temp) = match mode {
            OpenMode::Append => (
                OpenOptions::new().append(true).create(true).open(&key),
                None,
            ),
            OpenMode::Truncate => (
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&key),
                None,
            ),
            OpenMode::ReplaceAtomically => {
                // Beside the target, so the rename stays on one file system.
                let name = key
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let temp = key.with_file_name(format!(
                    ".{name}.{}-{}.tmp",
                    std::process::id(),
                    TEMP_NUMBER.fetch_add(1, Ordering::Relaxed)
                ));
                (
                    OpenOptions::new().write(true).create_new(true).open(&temp),
                    Some(temp),
                )
            }
        };
        let file = file.map_err(|e| Error::storage(temp.as_deref().unwrap_or(path), e))?;
        let pos = regular_len(&file);
        self.next_id += 1;
        let counters = Arc::new(Counters::default());
        self.stats
            .files
            .lock()
            .insert(id, (key.clone(), Arc::clone(&counters)));
        self.by_path.insert(key.clone(), id);
        self.files.insert(
            id,
            OpenFile {
                path: key.clone(),
                file: Arc::new(file),
                unsynced: 0,
                sync_state: Arc::default(),
                temp,
                mode,
                pending: Vec::new(),
                pending_entries: 0,
                generation: 0,
                handles: 1,
                error: None,
                ever_failed: false,
                needs_newline: false,
                counters: Arc::clone(&counters),
                out: String::new(),
                out_batches: VecDeque::new(),
                written: 0,
                complete: 0,
                lingering: false,
                pos,
            },
        );
        log::debug!(target: LOG, "recording to {} ({mode:?})", key.display());
        Ok(Opened {
            id,
            path: key,
            counters,
        })
    }

    /// Sorts and encodes a file's pending entries into its output buffer,
    /// then writes as much of it as `take` says (see [`write_len`]); what a
    /// partial take leaves waits for at most a linger. Errors are counted and
    /// kept for the next flush; the writer carries on with other files.
    fn write_batch(&mut self, id: u64, take: Take) {
        self.encode_pending(id);
        self.write_out(id, take);
    }

    /// Sorts a file's pending entries and encodes them, as one batch, onto
    /// its output buffer.
    fn encode_pending(&mut self, id: u64) {
        let Some(f) = self.files.get_mut(&id) else {
            return;
        };
        if !f.pending.is_empty() {
            let mut batch = mem::take(&mut f.pending);
            let n = mem::take(&mut f.pending_entries) as u64;
            batch.sort_by_key(Pending::ts); // stable: equal stamps keep arrival order
            if mem::take(&mut f.needs_newline) {
                f.out.push('\n');
            }
            let mut ts = TsCache::default();
            for item in &batch {
                match item {
                    Pending::One(entry) => {
                        encode_into(entry, &self.redactor, &mut f.out, &mut ts);
                        f.out.push('\n');
                    }
                    Pending::Burst(burst) => {
                        encode_burst_into(burst, &self.redactor, &mut f.out, &mut ts)
                    }
                }
            }
            f.out_batches.push_back(OutBatch {
                end: f.written + f.out.len() as u64,
                entries: n,
                generation: f.generation,
            });
            // Encoded bursts go back for reuse: a connection then allocates
            // nothing per burst, and no buffer is freed on another thread
            // than the one that allocated it (which glibc pays for with its
            // arena lock).
            for item in batch.drain(..) {
                if let Pending::Burst(burst) = item {
                    if burst.reusable() {
                        let _ = self.spare.try_send(burst);
                    }
                }
            }
            f.pending = batch; // keep the allocation for the next batch
        }
    }

    /// Writes as much of a file's output buffer as `take` says.
    fn write_out(&mut self, id: u64, take: Take) {
        let Some(f) = self.files.get_mut(&id) else {
            return;
        };
        let len = write_len(f.pos, &f.out, take);
        if take != Take::All && len < f.out.len() && !f.lingering {
            // Encoded output is not held for long: what is left after this
            // write goes out within `linger`, with whatever joins it.
            if let Some(at) = Instant::now().checked_add(self.linger) {
                self.lingers.push_back((at, id));
                f.lingering = true;
            }
        }
        if len == 0 {
            return;
        }
        give_way();
        let (done, result) = (self.write)(&f.file, f.out.as_bytes().get(..len).unwrap_or_default());
        f.written += done;
        f.pos = f.pos.map(|p| p + done);
        f.unsynced += done;
        if self.background_sync_bytes > 0
            && f.unsynced >= self.background_sync_bytes
            && self.syncer.request(&f.file, &f.sync_state)
        {
            f.unsynced = 0;
        }
        match result {
            Ok(()) => {
                debug_assert_eq!(done, len as u64, "a write that succeeds writes it all");
                add(&f.counters.bytes, done);
                add(&self.stats.total.bytes, done);
                f.out.drain(..len);
                while let Some(b) = f.out_batches.front() {
                    if b.end > f.written {
                        break;
                    }
                    f.complete = b.end;
                    add(&f.counters.entries, b.entries);
                    add(&self.stats.total.entries, b.entries);
                    f.out_batches.pop_front();
                }
            }
            Err(e) => {
                // Every batch not yet written whole is lost; whatever part of
                // one reached the file is cut off, so the file still ends
                // with a whole line.
                let lost: u64 = f.out_batches.drain(..).map(|b| b.entries).sum();
                add(&f.counters.write_errors, lost);
                add(&self.stats.total.write_errors, lost);
                f.ever_failed = true;
                let partial = f.written - f.complete;
                let cut_to = regular_len(&f.file)
                    .and_then(|len| len.checked_sub(partial))
                    .filter(|&len| partial > 0 && f.file.set_len(len).is_ok());
                if cut_to.is_some() {
                    // The cut took back bytes earlier writes had counted.
                    let counted = partial.saturating_sub(done);
                    f.counters.bytes.fetch_sub(counted, Ordering::Relaxed);
                    self.stats.total.bytes.fetch_sub(counted, Ordering::Relaxed);
                } else {
                    // They stay in the file: count them.
                    add(&f.counters.bytes, done);
                    add(&self.stats.total.bytes, done);
                }
                // (A file not opened to append must also be positioned at
                // its new end, or the next write would leave a hole.)
                let whole = partial == 0
                    || cut_to.is_some_and(|len| (&*f.file).seek(SeekFrom::Start(len)).is_ok());
                f.needs_newline = !whole;
                f.pos = cut_to.or_else(|| regular_len(&f.file));
                f.out.clear();
                f.written = 0;
                f.complete = 0;
                remember(f, e);
            }
        }
        if take == Take::All && f.out.is_empty() && f.out.capacity() > OUT_KEPT {
            // A huge frame, or a flood that has stopped, should not pin a
            // large buffer: an idle file keeps a modest one. (Not after a
            // linger: in a flood, that would free and grow it every time.)
            f.out.shrink_to(OUT_KEPT);
        }
    }

    /// Writes pending entries, fsyncs, and returns the first error since the last flush.
    fn flush(&mut self, id: u64) -> Result<()> {
        self.write_batch(id, Take::All);
        let Some(f) = self.files.get_mut(&id) else {
            return Ok(());
        };
        // Our own fsync first, then whatever a background sync met: an error
        // is reported to one of them only (see the `syncer` module).
        let own = sync(&f.file);
        let background = f.sync_state.settle();
        f.unsynced = 0;
        for e in [own.err(), background].into_iter().flatten() {
            add(&f.counters.write_errors, 1);
            add(&self.stats.total.write_errors, 1);
            f.ever_failed = true;
            remember(f, e);
        }
        match f.error.take() {
            Some(e) => Err(Error::storage(f.path.clone(), e)),
            None => Ok(()),
        }
    }

    fn flush_every(&mut self) -> Result<()> {
        let mut ids: Vec<u64> = self.files.keys().copied().collect();
        ids.sort_unstable();
        let mut first = None;
        for id in ids {
            if let Err(e) = self.flush(id) {
                if first.is_some() {
                    log::warn!(target: LOG, "flush: {e}");
                } else {
                    first = Some(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn commit(&mut self, id: u64) -> Result<()> {
        self.flush(id)?;
        let Some(f) = self.files.get_mut(&id) else {
            return Ok(());
        };
        let Some(temp) = f.temp.as_ref() else {
            return Ok(());
        };
        if f.ever_failed {
            return Err(Error::storage(
                f.path.clone(),
                io::Error::other(
                    "a write to the temporary file failed earlier; the target was left unchanged",
                ),
            ));
        }
        fs::rename(temp, &f.path).map_err(|e| Error::storage(f.path.clone(), e))?;
        f.temp = None;
        log::debug!(target: LOG, "committed {}", f.path.display());
        // The rename is durable only once the directory entry is.
        let dir = f.path.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| sync(&d))
            .map_err(|e| Error::storage(dir, e))
    }

    fn release(&mut self, id: u64) {
        let Some(f) = self.files.get_mut(&id) else {
            return;
        };
        f.handles = f.handles.saturating_sub(1);
        if f.handles == 0 {
            if let Err(e) = self.close(id) {
                // Nobody is left to ask: the log is the only place to say it.
                log::warn!(target: LOG, "closing recording: {e}");
            }
        }
    }

    /// Final write and fsync; an uncommitted temporary file is removed.
    fn close(&mut self, id: u64) -> Result<()> {
        let result = self.flush(id);
        if let Some(f) = self.files.remove(&id) {
            self.by_path.remove(&f.path);
            self.stats.files.lock().remove(&id);
            if let Some(temp) = &f.temp {
                if let Err(e) = fs::remove_file(temp) {
                    log::warn!(target: LOG, "removing {}: {e}", temp.display());
                }
                log::debug!(target: LOG, "abandoned {} (not committed)", f.path.display());
            } else {
                log::debug!(target: LOG, "closed {}", f.path.display());
            }
        }
        result
    }

    fn close_all(&mut self) -> Result<()> {
        let mut ids: Vec<u64> = self.files.keys().copied().collect();
        ids.sort_unstable();
        let mut first = None;
        for id in ids {
            if let Err(e) = self.close(id) {
                if first.is_some() {
                    log::warn!(target: LOG, "stop: {e}");
                } else {
                    first = Some(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Nothing can follow `Stop` (see `Link`), but if anything did, it is
    /// counted and answered rather than dropped silently.
    fn drain_after_stop(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(Cmd::Entry { .. }) => add(&self.stats.total.dropped, 1),
                Ok(Cmd::Entries { count, .. }) => add(&self.stats.total.dropped, count as u64),
                Ok(Cmd::Burst { burst, .. }) => add(&self.stats.total.dropped, burst.len() as u64),
                Ok(Cmd::Open { path, reply, .. }) => {
                    let _ = reply.send(Err(stopped(Some(&path))));
                }
                Ok(Cmd::Flush { reply, .. } | Cmd::Commit { reply, .. } | Cmd::Stop { reply }) => {
                    let _ = reply.send(Err(stopped(None)));
                }
                Ok(Cmd::Release { .. }) => {}
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }
}

/// Keeps the first error since the last flush (later ones are only counted).
fn remember(f: &mut OpenFile, e: io::Error) {
    if f.error.is_none() {
        log::warn!(target: LOG, "writing {} failed: {e}", f.path.display());
        f.error = Some(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn write_len_takes_everything_whole_chunks_or_whole_pages_as_asked() {
        let small = "x".repeat(3 * PAGE as usize + 10);
        let big = "x".repeat(WRITE_CHUNK + 1000);
        // All: everything, whatever the size or the position.
        assert_eq!(write_len(Some(7), &small, Take::All), small.len());
        assert_eq!(write_len(None, "", Take::All), 0);
        // Chunks: nothing below a chunk.
        assert_eq!(write_len(Some(0), &small, Take::Chunks), 0);
        // Above it, up to a page boundary of the file.
        let n = write_len(Some(0), &big, Take::Chunks);
        assert_eq!(n, WRITE_CHUNK);
        let n = write_len(Some(100), &big, Take::Chunks);
        assert_eq!((100 + n as u64) % PAGE, 0);
        assert!(big.len() - n < PAGE as usize);
        // Not a regular file: no alignment to keep, so all of it.
        assert_eq!(write_len(None, &big, Take::Chunks), big.len());
        // Pages: whole pages, or all of a small rest.
        assert_eq!(write_len(Some(0), &small, Take::Pages), 3 * PAGE as usize);
        assert_eq!(write_len(Some(0), "tail", Take::Pages), 4);
    }

    #[test]
    fn write_len_never_splits_a_character() {
        // 'é' is two bytes: put one across the page boundary the cut wants.
        let mut out = "x".repeat(WRITE_CHUNK - 1);
        out.push('é');
        out.push_str(&"y".repeat(100));
        let n = write_len(Some(0), &out, Take::Chunks);
        assert_eq!(n, WRITE_CHUNK - 1);
        assert!(out.is_char_boundary(n));
    }

    proptest::proptest! {
        #[test]
        fn write_len_cuts_at_a_character_just_before_a_page_boundary(
            pos in proptest::option::of(0u64..1 << 40),
            text in "[a-zé€😀]{0,40}",
            fill in 0usize..3 * WRITE_CHUNK,
            take in proptest::sample::select(vec![Take::All, Take::Chunks, Take::Pages]),
        ) {
            let out = "z".repeat(fill) + &text.repeat(200);
            let n = write_len(pos, &out, take);
            proptest::prop_assert!(n <= out.len());
            proptest::prop_assert!(out.is_char_boundary(n));
            let least = match take {
                Take::All => 0,
                Take::Chunks => WRITE_CHUNK,
                Take::Pages => 2 * PAGE as usize,
            };
            if take == Take::Chunks && out.len() < WRITE_CHUNK {
                proptest::prop_assert_eq!(n, 0);
            } else if take == Take::All || pos.is_none() || out.len() < least {
                proptest::prop_assert_eq!(n, out.len());
            } else if let Some(pos) = pos {
                // At most one character (4 bytes) short of a page boundary,
                // and never more than a page left behind.
                let end = pos + n as u64;
                proptest::prop_assert!((PAGE - end % PAGE) % PAGE < 4 || end % PAGE == 0);
                proptest::prop_assert!(out.len() - n < PAGE as usize + 4);
                proptest::prop_assert!(n > 0);
            }
        }
    }

    /// Bytes the failing writer lets through before it fails, once.
    static WRITE_BUDGET: AtomicU64 = AtomicU64::new(u64::MAX);

    /// Writes as `write_counting` does until the budget runs out, then writes
    /// what is left of it and fails as a full disk does.
    fn failing_write(file: &File, buf: &[u8]) -> (u64, io::Result<()>) {
        let budget = WRITE_BUDGET.load(Ordering::SeqCst);
        if (buf.len() as u64) <= budget {
            WRITE_BUDGET.store(budget - buf.len() as u64, Ordering::SeqCst);
            return write_counting(file, buf);
        }
        WRITE_BUDGET.store(u64::MAX, Ordering::SeqCst); // fail once
        let part = buf.get(..budget as usize).unwrap_or_default();
        let (done, result) = write_counting(file, part);
        let e = result
            .err()
            .unwrap_or_else(|| io::Error::from(io::ErrorKind::StorageFull));
        (done, Err(e))
    }

    #[test]
    fn a_write_that_fails_halfway_is_cut_back_to_whole_lines_and_counted() {
        let dir = std::env::temp_dir().join(format!("zen-ws-writer-fail-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("half.jsonl");
        let config = RecorderConfig {
            batch_size: 64,
            flush_interval: Duration::from_secs(3600),
            ..RecorderConfig::default()
        };
        let recorder = Recorder::launch(config, failing_write).unwrap();
        let file = recorder.open(&path, OpenMode::Truncate).unwrap();
        // The first chunk (256 KiB and a bit) goes through; the next one
        // fails in the middle of a line.
        WRITE_BUDGET.store(WRITE_CHUNK as u64 + 100_000, Ordering::SeqCst);
        let text = |i: usize| format!("{i:06}-{}", "p".repeat(93));
        for i in 0..5000 {
            file.record_text(Direction::In, &text(i), None);
        }
        let first = file.flush();
        assert!(matches!(first, Err(Error::Storage { .. })), "{first:?}");
        for i in 5000..5010 {
            file.record_text(Direction::In, &text(i), None);
        }
        file.flush().expect("the next flush finds no new error");
        let stats = file.stats();
        recorder.stop().unwrap();

        let read: Vec<_> = super::super::replay::Recording::open(&path)
            .unwrap()
            .collect();
        assert!(
            read.iter().all(|r| r.is_ok()),
            "a partial line was left: {:?}",
            read.iter().find(|r| r.is_err())
        );
        let texts: Vec<String> = read
            .into_iter()
            .filter_map(|r| match r.ok()?.kind {
                EntryKind::Text(t) => Some(t),
                _ => None,
            })
            .collect();
        // What is there is in order with one gap, the batches the failed
        // write held: the writer carried on with the later ones.
        let numbers: Vec<usize> = texts.iter().map(|t| t[..6].parse().unwrap()).collect();
        let gaps: Vec<(usize, usize)> = numbers
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .map(|w| (w[0], w[1]))
            .collect();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(numbers.first(), Some(&0));
        assert_eq!(numbers.last(), Some(&5009));
        assert!(gaps[0].0 >= WRITE_CHUNK / 200, "{gaps:?}");
        for (t, &i) in texts.iter().zip(&numbers) {
            assert_eq!(t, &text(i));
        }
        assert_eq!(stats.entries as usize, texts.len());
        assert_eq!(stats.entries + stats.write_errors, 5010, "{stats:?}");
        assert_eq!(stats.bytes, fs::metadata(&path).unwrap().len(), "{stats:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn handles_can_be_shared_between_threads() {
        assert_send_sync::<Recorder>();
        assert_send_sync::<RecordFile>();
    }

    #[test]
    fn the_defaults_are_the_documented_ones_and_valid() {
        let c = RecorderConfig::default();
        assert_eq!(c.batch_size, 256);
        assert_eq!(c.flush_interval, Duration::from_millis(100));
        assert_eq!(c.channel_capacity, 8192);
        assert_eq!(c.overflow, Overflow::Block);
        assert_eq!(c.background_sync_bytes, 64 << 20);
        assert_eq!(OpenMode::default(), OpenMode::Append);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn packing_keeps_every_entry_in_order_and_bursts_only_frames_that_share_a_stamp() {
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1);
        let t1 = t0 + Duration::from_micros(1);
        let e = |ts, dir, kind, conn| Entry {
            ts,
            dir,
            kind,
            conn,
        };
        let entries = vec![
            e(t0, Direction::In, EntryKind::Text("a".into()), Some(1)),
            e(t0, Direction::In, EntryKind::Binary(vec![0, 1]), Some(1)),
            e(t0, Direction::In, EntryKind::Text("é".into()), Some(1)),
            e(t0, Direction::Out, EntryKind::Text("b".into()), Some(1)),
            e(t0, Direction::Out, EntryKind::Text("c".into()), Some(2)),
            e(t1, Direction::Out, EntryKind::Text("d".into()), Some(2)),
            e(
                t1,
                Direction::Internal,
                EntryKind::Reconnected { attempt: 1 },
                Some(2),
            ),
            e(t1, Direction::Out, EntryKind::Text("e".into()), Some(2)),
        ];
        let (items, count) = pack(entries.clone());
        assert_eq!(count, entries.len());
        let sizes: Vec<usize> = items.iter().map(Pending::len).collect();
        assert_eq!(sizes, [3, 1, 1, 1, 1, 1]);
        let unpacked: Vec<Entry> = items
            .into_iter()
            .flat_map(|item| match item {
                Pending::One(e) => vec![e],
                Pending::Burst(b) => b.entries(),
            })
            .collect();
        assert_eq!(unpacked, entries);
    }

    #[test]
    fn a_stopped_error_is_recognized_and_a_real_broken_pipe_is_not() {
        assert!(is_stopped_error(&stopped(Some(Path::new("x")))));
        let epipe = Error::storage("x", io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_stopped_error(&epipe));
    }

    #[test]
    fn a_file_key_is_the_same_for_every_spelling_of_a_path() {
        let dir = std::env::temp_dir();
        let a = file_key(&dir.join("zen-ws-never-created.jsonl")).unwrap();
        let b = file_key(&dir.join(".").join("zen-ws-never-created.jsonl")).unwrap();
        assert_eq!(a, b);
        assert!(a.is_absolute());
        assert!(file_key(Path::new("/")).is_ok());
        assert!(file_key(&dir.join("zen-ws-no-such-dir").join("x")).is_err());
    }

    #[test]
    fn the_thread_is_named_and_stops_with_its_last_handle() {
        let r = Recorder::start(RecorderConfig::default()).unwrap();
        assert!(r.inner.name.starts_with("zen-ws-recorder-"));
        let link = Arc::clone(&r.inner.link);
        drop(r);
        assert!(
            link.tx.read().is_none(),
            "dropping the last handle stopped it"
        );
    }
}
