//! Background fsync: a helper of the writer thread that makes written data
//! durable while recording goes on.
//!
//! The kernel keeps written bytes in its page cache until it is told to write
//! them back or decides to by itself, which on a machine with plenty of
//! memory is only after gigabytes. A recorder writing a fast feed would then
//! pile up hundreds of megabytes, and the next `flush` (or `close`) would wait
//! for all of it at once: about a second per 500 MB on a fast SSD. So once a
//! file has `background_sync_bytes` written since its last fsync, the writer
//! hands it to this thread, which fsyncs it while the writer carries on.
//! A flush then only waits for what was written since.
//!
//! The writer still owns every file: this thread only ever holds a shared
//! handle for the duration of one fsync, and at most two are in its hands (one
//! being synced, one queued). A request is skipped, not queued, while both
//! slots are taken, because the sync already running will cover most of it.
//!
//! An fsync error is reported once per open file description (Linux), so an
//! error this thread sees would not be seen again by the flush. It is kept in
//! the file's [`SyncState`] and the flush waits for any sync in flight before
//! it looks there: a flush never returns `Ok` for data a background sync
//! failed to write.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex};

const LOG: &str = "zen_websocket";

/// How a file's background syncs stand, shared by the writer and the helper.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    inner: Mutex<StateInner>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct StateInner {
    /// Syncs queued or running.
    in_flight: usize,
    /// The first error a background sync met since the writer last looked.
    error: Option<io::Error>,
}

impl SyncState {
    /// Waits until no background sync of the file is queued or running, then
    /// takes the error one of them met, if any.
    pub(crate) fn settle(&self) -> Option<io::Error> {
        let mut s = self.inner.lock();
        while s.in_flight > 0 {
            self.done.wait(&mut s);
        }
        s.error.take()
    }

    fn finished(&self, result: io::Result<()>) {
        let mut s = self.inner.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if let Err(e) = result {
            log::warn!(target: LOG, "background fsync failed: {e}");
            s.error.get_or_insert(e);
        }
        self.done.notify_all();
    }
}

struct Job {
    file: Arc<File>,
    state: Arc<SyncState>,
}

/// The helper thread, started on the first request and joined on drop.
pub(crate) struct Syncer {
    name: String,
    sync: fn(&File) -> io::Result<()>,
    worker: Option<(Sender<Job>, JoinHandle<()>)>,
    /// Starting the thread failed once: do without (flushes still fsync).
    unavailable: bool,
}

impl Syncer {
    /// A syncer whose thread, once started, is named `name` and calls `sync`.
    pub(crate) fn new(name: String, sync: fn(&File) -> io::Result<()>) -> Syncer {
        Syncer {
            name,
            sync,
            worker: None,
            unavailable: false,
        }
    }

    /// Asks for `file` to be synced in the background. False when the helper
    /// is busy with two files already, or cannot be started.
    pub(crate) fn request(&mut self, file: &Arc<File>, state: &Arc<SyncState>) -> bool {
        if self.unavailable {
            return false;
        }
        if self.worker.is_none() {
            let (tx, rx) = bounded(1);
            let sync = self.sync;
            match thread::Builder::new()
                .name(self.name.clone())
                .stack_size(128 << 10)
                .spawn(move || run(rx, sync))
            {
                Ok(handle) => self.worker = Some((tx, handle)),
                Err(e) => {
                    log::warn!(target: LOG, "no background fsync ({e}); flushes do it all");
                    self.unavailable = true;
                    return false;
                }
            }
        }
        let Some((tx, _)) = &self.worker else {
            return false;
        };
        // Counted before the send, so a flush that looks right after cannot
        // miss a sync that is about to start.
        state.inner.lock().in_flight += 1;
        let job = Job {
            file: Arc::clone(file),
            state: Arc::clone(state),
        };
        match tx.try_send(job) {
            Ok(()) => true,
            Err(e) => {
                e.into_inner().state.finished(Ok(()));
                false
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.worker.take() {
            drop(tx);
            if handle.join().is_err() {
                log::warn!(target: LOG, "{} panicked", self.name);
            }
        }
    }
}

fn run(rx: Receiver<Job>, sync: fn(&File) -> io::Result<()>) {
    for job in rx {
        let result = sync(&job.file);
        job.state.finished(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn temp_file(name: &str) -> (std::path::PathBuf, Arc<File>) {
        let path =
            std::env::temp_dir().join(format!("zen-ws-syncer-{name}-{}.tmp", std::process::id()));
        let file = File::create(&path).unwrap();
        (path, Arc::new(file))
    }

    #[test]
    fn a_failed_background_sync_is_kept_for_the_flush_that_settles_after_it() {
        fn failing(_: &File) -> io::Result<()> {
            Err(io::Error::other("injected fsync failure"))
        }
        let (path, file) = temp_file("fail");
        let state = Arc::new(SyncState::default());
        let mut syncer = Syncer::new("zen-ws-test-sync".into(), failing);
        assert!(syncer.request(&file, &state));
        let error = state.settle().expect("the error reaches the flush");
        assert_eq!(error.to_string(), "injected fsync failure");
        assert!(state.settle().is_none(), "reported once");
        drop(syncer);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn settling_waits_for_a_sync_in_flight() {
        fn slow(_: &File) -> io::Result<()> {
            thread::sleep(Duration::from_millis(50));
            Err(io::Error::other("late failure"))
        }
        let (path, file) = temp_file("slow");
        let state = Arc::new(SyncState::default());
        let mut syncer = Syncer::new("zen-ws-test-sync".into(), slow);
        assert!(syncer.request(&file, &state));
        // However soon the flush looks, the failure of the sync in flight is
        // what it finds.
        assert!(state.settle().is_some());
        drop(syncer);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_busy_helper_skips_requests_instead_of_queueing_them() {
        let (gate_tx, gate_rx) = bounded::<()>(0);
        static GATE: std::sync::OnceLock<Mutex<Option<Receiver<()>>>> = std::sync::OnceLock::new();
        GATE.get_or_init(|| Mutex::new(None))
            .lock()
            .replace(gate_rx);
        fn gated(_: &File) -> io::Result<()> {
            let rx = GATE.get().and_then(|g| g.lock().clone());
            if let Some(rx) = rx {
                let _ = rx.recv_timeout(Duration::from_secs(10));
            }
            Ok(())
        }
        let (path, file) = temp_file("busy");
        let state = Arc::new(SyncState::default());
        let mut syncer = Syncer::new("zen-ws-test-sync".into(), gated);
        // One running (held at the gate), one queued, then no more room.
        assert!(syncer.request(&file, &state));
        let mut accepted = 1;
        while syncer.request(&file, &state) {
            accepted += 1;
            assert!(accepted <= 2, "more than two syncs held");
        }
        for _ in 0..accepted {
            gate_tx.send_timeout((), Duration::from_secs(10)).unwrap();
        }
        assert!(state.settle().is_none());
        drop(syncer);
        let _ = std::fs::remove_file(path);
    }
}
