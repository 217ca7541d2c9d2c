//! The token refresh thread (`zen-ws-deribit-refresh`), owned by a
//! [`DeribitClient`](super::DeribitClient).
//!
//! It sleeps until the tokens are due (80 % of `expires_in`, at least 1 s
//! after they arrived), then asks `public/auth` with grant `refresh_token` on
//! the client's connection and stores the new tokens. It wakes early when
//! `on_connect` stores tokens after a reconnect (to reschedule) and when the
//! owner closes (the stop channel disconnects). A failed refresh is logged
//! without secrets and retried with backoff; once the server refuses the
//! refresh token itself, the next try authenticates with the key instead. A
//! reconnect re-authenticates anyway, so a refresh failing during an outage
//! costs nothing.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select_biased, Receiver, Sender};
use serde_json::json;

use super::config::Credentials;
use super::protocol::{map_rpc_error, AuthState, Tokens};
use crate::{Client, Error, Result};

/// The first retry delay after a failed refresh; doubled per failure.
const RETRY_BASE: Duration = Duration::from_secs(1);
/// The longest retry delay: tokens of 15 minutes leave three minutes after
/// the 80 % mark, so a minute between tries still gets several in.
const RETRY_CAP: Duration = Duration::from_secs(60);
/// The bound on one refresh request: shorter than the client's default
/// request timeout, so that a stalled connection gets a retry (or a
/// reconnect's fresh auth) sooner.
const REQUEST_CAP: Duration = Duration::from_secs(10);

/// The running thread, and the channel whose disconnection stops it.
pub(super) struct Refresher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the thread needs.
pub(super) struct Context {
    pub(super) client: Client,
    pub(super) auth: Arc<AuthState>,
    pub(super) changed: Receiver<()>,
    pub(super) credentials: Credentials,
}

impl Refresher {
    /// Start the thread.
    pub(super) fn spawn(ctx: Context) -> Result<Refresher> {
        // Nothing is ever sent on `stop`: dropping the sender is the signal.
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        // The same stack as the connection thread: it runs the same request path.
        let stack = ctx.client.config().thread_stack_size;
        let thread = std::thread::Builder::new()
            .name("zen-ws-deribit-refresh".to_owned())
            .stack_size(stack)
            .spawn(move || run(ctx, stopped))
            .map_err(|e| Error::io("spawning the Deribit token refresh thread", e))?;
        Ok(Refresher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Tell the thread to stop (it may be in a request; closing the client
    /// ends that), without waiting.
    pub(super) fn signal(&mut self) {
        self.stop.take();
    }

    /// Signal and wait for the thread to end. Idempotent.
    pub(super) fn join(&mut self) {
        self.signal();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!(target: "zen_websocket", "deribit: the token refresh thread panicked");
            }
        }
    }

    /// True while the thread runs.
    pub(super) fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.join();
    }
}

/// The delay before retry number `failures` (1-based): 1 s, 2 s, 4 s, … 60 s.
fn retry_delay(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    RETRY_BASE.saturating_mul(factor).min(RETRY_CAP)
}

/// The thread's loop.
fn run(ctx: Context, stop: Receiver<()>) {
    let debug = ctx.client.config().debug;
    let timeout = ctx.client.config().request_timeout.min(REQUEST_CAP);
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    // After the server refused the refresh token, fall back to the key.
    let mut use_key = false;
    loop {
        let due = retry_at.or_else(|| ctx.auth.refresh_due());
        let timer = match due {
            Some(at) => crossbeam_channel::at(at),
            None => crossbeam_channel::never(),
        };
        // Stop wins over everything; fresh tokens from a reconnect reschedule.
        select_biased! {
            recv(stop) -> _ => return,
            recv(ctx.changed) -> rung => {
                // The sender lives in `ctx.auth`, so this cannot disconnect;
                // if it ever did, looping on it would spin.
                if rung.is_err() {
                    return;
                }
                failures = 0;
                retry_at = None;
                use_key = false;
                continue;
            }
            recv(timer) -> _ => {}
        }
        let Some(current) = ctx.auth.tokens() else {
            retry_at = None;
            continue;
        };
        match refresh(&ctx, &current, use_key, timeout) {
            Ok(tokens) => {
                if debug {
                    log::debug!(
                        target: "zen_websocket",
                        "deribit: tokens refreshed (expire in {:?})",
                        tokens.expires_in()
                    );
                }
                ctx.auth.store(tokens, false);
                failures = 0;
                retry_at = None;
                use_key = false;
            }
            Err(e) => {
                // Closing the client fails a refresh in flight: not worth a warning.
                if let Err(crossbeam_channel::TryRecvError::Disconnected) = stop.try_recv() {
                    return;
                }
                // Closed for good (closed through `client()`, or reconnection
                // gave up): nothing left to refresh.
                if matches!(e, Error::Closed) {
                    return;
                }
                failures = failures.saturating_add(1);
                let delay = retry_delay(failures);
                // The error's Display carries the code and message, never the
                // request's params (where the secrets are).
                if matches!(e, Error::NotConnected | Error::Disconnected) {
                    // The reconnect authenticates afresh and wakes us: no news.
                    if debug {
                        log::debug!(
                            target: "zen_websocket",
                            "deribit: token refresh skipped while reconnecting ({e})"
                        );
                    }
                } else {
                    log::warn!(
                        target: "zen_websocket",
                        "deribit: token refresh failed ({e}); retrying in {delay:?}"
                    );
                }
                use_key = matches!(e, Error::Auth { .. });
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
}

/// One refresh: grant `refresh_token`, or `client_credentials` when `use_key`.
fn refresh(ctx: &Context, current: &Tokens, use_key: bool, timeout: Duration) -> Result<Tokens> {
    let params = if use_key {
        json!({
            "grant_type": "client_credentials",
            "client_id": ctx.credentials.client_id(),
            "client_secret": ctx.credentials.client_secret(),
        })
    } else {
        json!({
            "grant_type": "refresh_token",
            "refresh_token": current.refresh_token(),
        })
    };
    let result = ctx
        .client
        .request_with_timeout("public/auth", params, timeout)
        .map_err(map_rpc_error)?;
    Tokens::from_result(&result, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_a_minute() {
        let d: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(u32::MAX), RETRY_CAP);
        assert_eq!(retry_delay(0), RETRY_BASE);
    }
}
