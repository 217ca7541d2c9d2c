//! The acceptor thread (`zen-ws-mock-accept`): accepts TCP connections and
//! gives each one its own connection thread.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::connection::{self, ConnContext};
use super::server::{ConnEntry, Shared};

/// How long to back off after a failing `accept` (out of file descriptors, …)
/// so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(5);

/// What the acceptor needs from the handle.
pub(super) struct AcceptContext {
    pub(super) shared: Arc<Shared>,
    /// Set by `stop` before it wakes the acceptor.
    pub(super) stop: Arc<AtomicBool>,
    /// Disconnected by `stop`; connection threads sleep on it.
    pub(super) shutdown: Receiver<()>,
    pub(super) tls: Option<native_tls::TlsAcceptor>,
}

/// The acceptor's main loop. Ends when `stop` is set (the handle then connects
/// to wake a blocked `accept`), and joins every connection thread it spawned.
pub(super) fn run(listener: TcpListener, ctx: AcceptContext) {
    let mut children: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let accepted = listener.accept();
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        match accepted {
            Ok((stream, peer)) => {
                log::debug!("mock server: connection from {peer}");
                // Finished threads need no join; keep the list short on long runs.
                children.retain(|h| !h.is_finished());
                match spawn_connection(stream, &ctx) {
                    Ok(Some(child)) => children.push(child),
                    Ok(None) => break,
                    Err(e) => log::warn!("mock server: cannot start a connection: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("mock server: accept failed: {e}");
                if let Err(RecvTimeoutError::Disconnected) =
                    ctx.shutdown.recv_timeout(ACCEPT_BACKOFF)
                {
                    break;
                }
            }
        }
    }
    drop(listener);
    for child in children {
        if child.join().is_err() {
            log::error!("a mock server connection thread panicked");
        }
    }
}

/// Register `stream` and start its thread. `Ok(None)`: the server is stopping.
fn spawn_connection(stream: TcpStream, ctx: &AcceptContext) -> io::Result<Option<JoinHandle<()>>> {
    let id = ctx.shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (commands, commands_rx) = crossbeam_channel::unbounded();
    let entry = ConnEntry {
        commands,
        socket: stream.try_clone()?,
        upgraded: false,
        silent: false,
    };
    if !ctx.shared.register(id, entry) {
        let _ = stream.shutdown(Shutdown::Both);
        return Ok(None);
    }
    let conn = ConnContext {
        id,
        shared: Arc::clone(&ctx.shared),
        commands: commands_rx,
        shutdown: ctx.shutdown.clone(),
        tls: ctx.tls.clone(),
    };
    let spawned = thread::Builder::new()
        .name(format!("zen-ws-mock-conn-{id}"))
        .spawn(move || connection::run(stream, conn));
    match spawned {
        Ok(child) => Ok(Some(child)),
        Err(e) => {
            // The closure (and the stream with it) was dropped; forget the clone too.
            ctx.shared.unregister(id);
            Err(e)
        }
    }
}
