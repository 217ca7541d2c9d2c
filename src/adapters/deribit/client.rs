//! [`DeribitClient`]: a [`Client`] speaking Deribit, with its token refresh
//! thread, and [`Notification`], the typed form of subscription data.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use serde_json::Value;

use super::config::DeribitConfig;
use super::protocol::{map_rpc_error, AuthState, DeribitProtocol, Tokens};
use super::refresh::{Context, Refresher};
use crate::{Client, Event, Result};

/// One subscription notification: the channel and its data.
///
/// ```
/// use serde_json::json;
/// use zen_websocket::adapters::deribit::Notification;
/// use zen_websocket::Event;
///
/// let event = Event::Subscription { channel: "trades.BTC-PERPETUAL.raw".into(), data: json!([]) };
/// let n = Notification::from_event(event).unwrap();
/// assert_eq!(n.channel, "trades.BTC-PERPETUAL.raw");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The channel, e.g. `ticker.BTC-PERPETUAL.100ms`.
    pub channel: String,
    /// The notification's `data`.
    pub data: Value,
}

impl Notification {
    /// The notification an [`Event::Subscription`] carries; any other event is
    /// handed back unchanged, so nothing is lost when you match on the rest.
    pub fn from_event(event: Event) -> std::result::Result<Notification, Event> {
        match event {
            Event::Subscription { channel, data } => Ok(Notification { channel, data }),
            other => Err(other),
        }
    }
}

/// A connected Deribit client: authenticated (when credentials are given),
/// platform heartbeats answered, tokens refreshed, subscriptions restored after
/// every reconnect, and Deribit's error codes typed.
///
/// On every (re)connect, in order: `public/auth`, `public/set_heartbeat`,
/// `private/enable_cancel_on_disconnect` (if configured), then the restore of
/// the tracked subscriptions (see [`DeribitProtocol`]). With credentials, a
/// thread `zen-ws-deribit-refresh` refreshes the tokens at 80 % of their
/// lifetime; [`close`](Self::close) (or drop) stops and joins it.
///
/// Errors are mapped through [`codes::map_error`](super::codes::map_error):
/// Deribit's 10028 is [`Error::RateLimited`](crate::Error::RateLimited),
/// 13004/13009/… are [`Error::Auth`](crate::Error::Auth), other codes stay
/// [`Error::Rpc`](crate::Error::Rpc).
///
/// ```
/// use std::time::Duration;
/// use serde_json::json;
/// use zen_websocket::adapters::deribit::{DeribitClient, DeribitConfig, Notification};
/// use zen_websocket::testing::DeribitServer;
///
/// // A local server speaking enough of Deribit's API (loopback only).
/// let server = DeribitServer::start()?;
/// let config = DeribitConfig::builder()
///     .url(server.url())
///     .credentials(DeribitServer::DEMO_CLIENT_ID, DeribitServer::DEMO_CLIENT_SECRET)
///     .build()?;
/// let client = DeribitClient::connect(config)?; // authenticated and heartbeat set
/// assert!(client.tokens().is_some());
///
/// client.subscribe(&["ticker.BTC-PERPETUAL.100ms", "user.orders.BTC-PERPETUAL.raw"])?;
/// server.publish("ticker.BTC-PERPETUAL.100ms", json!({"mark_price": 42000.5}));
/// let events = client.events();
/// let tick = loop {
///     let event = events.recv_timeout(Duration::from_secs(5)).expect("a notification");
///     if let Ok(n) = Notification::from_event(event) {
///         break n;
///     }
/// };
/// assert_eq!(tick.data["mark_price"], 42000.5);
///
/// let now_ms = client.request("public/get_time", json!({}))?;
/// assert!(now_ms.as_u64().is_some());
/// client.close()?;
/// # Ok::<(), zen_websocket::Error>(())
/// ```
pub struct DeribitClient {
    client: Client,
    config: DeribitConfig,
    auth: Arc<AuthState>,
    /// `None` without credentials (nothing to refresh) and after close.
    refresher: Mutex<Option<Refresher>>,
}

impl fmt::Debug for DeribitClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // try_lock: Debug must never wait behind a close in progress.
        let refreshing = self
            .refresher
            .try_lock()
            .map(|r| r.as_ref().is_some_and(Refresher::is_running));
        f.debug_struct("DeribitClient")
            .field("client", &self.client)
            .field("credentials", &self.config.credentials)
            .field("authenticated", &self.auth.tokens().is_some())
            .field("refresh_thread", &refreshing)
            .finish()
    }
}

impl DeribitClient {
    /// Connect, authenticate and set up the heartbeat; returns once all of it
    /// succeeded, or the real cause: [`Error::Auth`](crate::Error::Auth) for
    /// refused credentials, a connection error, a timeout.
    pub fn connect(config: DeribitConfig) -> Result<DeribitClient> {
        let (auth, changed) = AuthState::new();
        let protocol = DeribitProtocol::with_state(&config, auth.clone());
        let client_config = config.client.to_builder().protocol(protocol).build()?;
        let client = Client::connect(client_config)?;
        let refresher = match &config.credentials {
            Some(credentials) => {
                let ctx = Context {
                    client: client.clone(),
                    auth: auth.clone(),
                    changed,
                    credentials: credentials.clone(),
                };
                match Refresher::spawn(ctx) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        // Do not leave a connection without its owner's refresh.
                        let _ = client.close();
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        Ok(DeribitClient {
            client,
            config,
            auth,
            refresher: Mutex::new(refresher),
        })
    }

    /// Call a Deribit method and wait for its result (up to the client's
    /// `request_timeout`), e.g. `request("private/get_positions",
    /// json!({"currency": "BTC"}))`. Errors are typed (see [`DeribitClient`]).
    pub fn request(&self, method: &str, params: Value) -> Result<Value> {
        self.client.request(method, params).map_err(map_rpc_error)
    }

    /// [`request`](Self::request) with its own timeout.
    pub fn request_with_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value> {
        self.client
            .request_with_timeout(method, params, timeout)
            .map_err(map_rpc_error)
    }

    /// Subscribe (`public/subscribe`, or `private/subscribe` when a channel is
    /// private); returns the channels Deribit confirmed, which are tracked and
    /// restored after every reconnect. Data arrives on [`events`](Self::events)
    /// as [`Event::Subscription`].
    pub fn subscribe<S: AsRef<str>>(&self, channels: &[S]) -> Result<Vec<String>> {
        self.client.subscribe(channels).map_err(map_rpc_error)
    }

    /// Unsubscribe; the channels are untracked once Deribit confirms.
    pub fn unsubscribe<S: AsRef<str>>(&self, channels: &[S]) -> Result<()> {
        self.client.unsubscribe(channels).map_err(map_rpc_error)
    }

    /// The tracked (confirmed) channels.
    pub fn subscriptions(&self) -> Vec<String> {
        self.client.subscriptions()
    }

    /// The client's event channel: subscription data as
    /// [`Event::Subscription`] (see [`Notification::from_event`]), plain
    /// messages, and lifecycle events (`Reconnected`, `SubscriptionsRestored`, …).
    pub fn events(&self) -> Receiver<Event> {
        self.client.events()
    }

    /// The tokens of the last authentication or refresh; `None` without
    /// credentials. `Debug` of [`Tokens`] hides them.
    pub fn tokens(&self) -> Option<Tokens> {
        self.auth.tokens()
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &DeribitConfig {
        &self.config
    }

    /// The underlying [`Client`] (stats, state, plain sends, batches). Closing
    /// it closes this client's connection too.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Close: stop the refresh thread, close the connection (close handshake,
    /// joins the connection thread), join the refresh thread. Idempotent.
    pub fn close(&self) -> Result<()> {
        let refresher = self.refresher.lock().take();
        let mut refresher = refresher;
        if let Some(r) = refresher.as_mut() {
            r.signal();
        }
        // Closing the connection fails a refresh in flight at once, so the
        // join below never waits out a request timeout.
        let closed = self.client.close();
        if let Some(mut r) = refresher {
            r.join();
        }
        closed
    }
}

impl Drop for DeribitClient {
    fn drop(&mut self) {
        // Errors here can only mean "already closed".
        let _ = self.close();
    }
}

// Handles are shared across threads (e.g. in an Arc) by design.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DeribitClient>();
};
