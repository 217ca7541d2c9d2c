//! [`DeribitProtocol`]: Deribit's dialect of JSON-RPC, and what runs on every
//! (re)connect: authentication, the platform heartbeat, cancel-on-disconnect.
//!
//! The tokens `public/auth` returns live in [`AuthState`], shared between the
//! protocol (which the connection thread drives) and the
//! [`DeribitClient`](super::DeribitClient) (whose refresh thread keeps them
//! fresh).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::books::{is_book_channel, BookSequences, Verdict};
use super::codes;
use super::config::{Credentials, DeribitConfig};
use crate::protocol::jsonrpc::{Request, RequestId};
use crate::protocol::{channel_list, Inbound, Protocol, Session};
use crate::{Error, Result};

/// A channel is private (needs an authenticated connection and
/// `private/subscribe`) when Deribit puts it under `user.`: `user.orders.*`,
/// `user.trades.*`, `user.portfolio.*`, `user.changes.*`, …
///
/// ```
/// use zen_websocket::adapters::deribit::is_private_channel;
/// assert!(is_private_channel("user.orders.BTC-PERPETUAL.raw"));
/// assert!(!is_private_channel("ticker.BTC-PERPETUAL.100ms"));
/// ```
pub fn is_private_channel(channel: &str) -> bool {
    channel.starts_with("user.")
}

/// Turn an [`Error::Rpc`] from Deribit into its typed error
/// ([`codes::map_error`]): 10028 → [`Error::RateLimited`], the auth codes →
/// [`Error::Auth`]. Every other error passes through unchanged.
///
/// ```
/// use zen_websocket::adapters::deribit::map_rpc_error;
/// use zen_websocket::{Error, ErrorCategory};
///
/// let e = map_rpc_error(Error::Rpc { code: 13004, message: "invalid_credentials".into(), data: None });
/// assert_eq!(e.category(), ErrorCategory::Auth);
/// assert!(matches!(map_rpc_error(Error::Disconnected), Error::Disconnected));
/// ```
pub fn map_rpc_error(error: Error) -> Error {
    match error {
        Error::Rpc {
            code,
            message,
            data,
        } => codes::map_error(code, &message, data),
        other => other,
    }
}

/// The tokens of one successful `public/auth`.
///
/// `Debug` never shows the tokens themselves.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    access_token: String,
    refresh_token: String,
    expires_in: Duration,
    scope: String,
    token_type: String,
    obtained_at: Instant,
}

/// The longest `expires_in` taken as is; more is treated as this (a year), so
/// that deadline arithmetic on a garbage value cannot overflow.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(365 * 24 * 3600);

impl Tokens {
    /// Read the result of `public/auth`. An answer without an `access_token`,
    /// a `refresh_token` or an `expires_in` is an [`Error::Auth`]: the
    /// connection is not known to be authenticated, so it must not count as
    /// a success.
    pub(super) fn from_result(result: &Value, obtained_at: Instant) -> Result<Tokens> {
        let text = |key: &str| {
            result
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let missing = |key: &str| Error::Auth {
            detail: format!("public/auth answered without `{key}`"),
        };
        let access_token = text("access_token").ok_or_else(|| missing("access_token"))?;
        let refresh_token = text("refresh_token").ok_or_else(|| missing("refresh_token"))?;
        let expires_in = result
            .get("expires_in")
            .and_then(Value::as_f64)
            .filter(|s| *s >= 0.0)
            .map(|s| Duration::try_from_secs_f64(s).unwrap_or(MAX_EXPIRES_IN))
            .map(|d| d.min(MAX_EXPIRES_IN))
            .ok_or_else(|| missing("expires_in"))?;
        Ok(Tokens {
            access_token,
            refresh_token,
            expires_in,
            scope: text("scope").unwrap_or_default(),
            token_type: text("token_type").unwrap_or_else(|| "bearer".to_owned()),
            obtained_at,
        })
    }

    /// The access token (for Deribit's HTTP API, for instance). Keep it out of logs.
    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// The refresh token. Keep it out of logs.
    pub fn refresh_token(&self) -> &str {
        &self.refresh_token
    }

    /// How long the access token was valid for when it was issued.
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// The scope Deribit granted, e.g. `"connection mainaccount"`.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The token type (`"bearer"`).
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// When the answer carrying these tokens arrived.
    pub fn obtained_at(&self) -> Instant {
        self.obtained_at
    }

    /// When the access token expires (`None` if that instant cannot be
    /// represented).
    pub fn expires_at(&self) -> Option<Instant> {
        self.obtained_at.checked_add(self.expires_in)
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"[REDACTED]")
            .field("refresh_token", &"[REDACTED]")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field("token_type", &self.token_type)
            .finish_non_exhaustive()
    }
}

/// The share of `expires_in` after which the tokens are refreshed: early
/// enough that a slow or failed first try leaves time for retries.
pub(super) const REFRESH_AT: f64 = 0.8;
/// The soonest a refresh is scheduled after the tokens arrived, so that a
/// server handing out very short tokens cannot make us spin.
pub(super) const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);

/// The tokens, shared by the protocol (connection thread) and the refresh
/// thread. One lock, held only to copy or replace the tokens.
pub(super) struct AuthState {
    tokens: Mutex<Option<Tokens>>,
    /// Rung (never blocking: `bounded(1)` and `try_send`) whenever `on_connect`
    /// stores new tokens, so that the refresh thread reschedules.
    changed: Sender<()>,
}

impl AuthState {
    /// The state and the doorbell the refresh thread sleeps on.
    pub(super) fn new() -> (Arc<AuthState>, Receiver<()>) {
        let (changed, rx) = crossbeam_channel::bounded(1);
        (
            Arc::new(AuthState {
                tokens: Mutex::new(None),
                changed,
            }),
            rx,
        )
    }

    pub(super) fn tokens(&self) -> Option<Tokens> {
        self.tokens.lock().clone()
    }

    /// Store new tokens; `ring` wakes the refresh thread (the refresh thread
    /// itself stores without ringing).
    pub(super) fn store(&self, tokens: Tokens, ring: bool) {
        *self.tokens.lock() = Some(tokens);
        if ring {
            // Full means a ring is already pending: one wake-up is enough.
            let _ = self.changed.try_send(());
        }
    }

    /// When the current tokens should be refreshed; `None` without tokens.
    pub(super) fn refresh_due(&self) -> Option<Instant> {
        let guard = self.tokens.lock();
        let t = guard.as_ref()?;
        let delay = t.expires_in.mul_f64(REFRESH_AT).max(MIN_REFRESH_DELAY);
        t.obtained_at.checked_add(delay)
    }
}

/// Settings of the protocol, taken from a [`DeribitConfig`].
#[derive(Clone)]
struct Settings {
    credentials: Option<Credentials>,
    heartbeat_interval: Duration,
    cancel_on_disconnect: bool,
    debug: bool,
}

/// Deribit's dialect of JSON-RPC 2.0, for [`ConfigBuilder::protocol`](crate::ConfigBuilder::protocol).
///
/// - **Subscriptions**: `public/subscribe` (and `public/unsubscribe`) with
///   `{"channels": […]}` when every channel is public; `private/subscribe`
///   (and `private/unsubscribe`) as soon as one channel is private
///   ([`is_private_channel`]). A mixed list is sent as *one*
///   `private/subscribe`, which Deribit accepts for public channels too: one
///   request keeps the client's single restore message after a reconnect,
///   and a confirmation that covers all channels at once.
/// - **Inbound**: [`codes::classify_value`]: `test_request` heartbeats are
///   answered with `public/test` automatically, subscription notifications
///   become [`Event::Subscription`](crate::Event::Subscription), responses go
///   to their callers.
/// - **Order books** (`book.*` channels): the last `change_id` of each is
///   kept, and every change's `prev_change_id` is checked against it. The
///   first notification after a subscribe is the snapshot (`"type":
///   "snapshot"`), which sets the baseline; changes that arrive before it are
///   dropped. A change that does not follow the last one is a gap: it becomes
///   [`Inbound::SequenceGap`], which the client reports as
///   [`Event::SequenceGap`](crate::Event::SequenceGap)`{ channel, expected:
///   last change_id, received: prev_change_id }` and answers by resubscribing
///   that channel alone; the gapped change and those after it are dropped
///   until the fresh snapshot arrives, so at most one resubscribe per channel
///   is in flight. The state belongs to one connection: all of it is reset
///   on every (re)connect, and a channel's part on its unsubscribe. Grouped books
///   (`book.{instrument}.{group}.{depth}.{interval}`, whole books without
///   `prev_change_id`) are never gaps.
/// - **On every (re)connect**, before subscriptions are restored:
///   1. `public/auth` (grant `client_credentials`) when credentials are set;
///      the tokens are stored for [`tokens`](Self::tokens) and the refresh
///      thread. A refused key is [`Error::Auth`], which stops reconnection.
///   2. `public/set_heartbeat` with the configured interval.
///   3. `private/enable_cancel_on_disconnect` when configured.
///
/// [`DeribitClient`](super::DeribitClient) installs it for you; use it directly
/// with a plain [`Client`](crate::Client) when you want no refresh thread:
///
/// ```
/// use zen_websocket::adapters::deribit::{DeribitConfig, DeribitProtocol};
/// use zen_websocket::protocol::jsonrpc::RequestId;
/// use zen_websocket::protocol::Protocol;
///
/// let p = DeribitProtocol::new(&DeribitConfig::builder().build()?);
/// let mixed = ["ticker.BTC-PERPETUAL.100ms".to_string(), "user.orders.any.any.raw".to_string()];
/// assert_eq!(p.subscribe_request(&mixed[..1], &RequestId::Number(1)).method, "public/subscribe");
/// assert_eq!(p.subscribe_request(&mixed, &RequestId::Number(2)).method, "private/subscribe");
/// # Ok::<(), zen_websocket::ConfigError>(())
/// ```
///
/// A gap, as the connection thread sees it:
///
/// ```
/// use serde_json::json;
/// use zen_websocket::adapters::deribit::DeribitProtocol;
/// use zen_websocket::protocol::jsonrpc::RequestId;
/// use zen_websocket::protocol::{Inbound, Protocol};
///
/// let p = DeribitProtocol::default();
/// let book = "book.BTC-PERPETUAL.100ms".to_string();
/// let note = |data: serde_json::Value| {
///     let v = json!({"jsonrpc": "2.0", "method": "subscription",
///                    "params": {"channel": book, "data": data}});
///     p.classify(&v.to_string(), Some(&v))
/// };
/// p.subscribe_request(&[book.clone()], &RequestId::Number(1));
/// assert!(matches!(note(json!({"type": "snapshot", "change_id": 7})), Inbound::Subscription { .. }));
/// assert!(matches!(note(json!({"type": "change", "prev_change_id": 7, "change_id": 8})),
///     Inbound::Subscription { .. }));
/// // Change 9 was lost:
/// assert_eq!(
///     note(json!({"type": "change", "prev_change_id": 9, "change_id": 10})),
///     Inbound::SequenceGap { channel: book.clone(), expected: 8, received: 9 }
/// );
/// // Until the fresh snapshot, changes are dropped.
/// assert_eq!(note(json!({"type": "change", "prev_change_id": 10, "change_id": 11})), Inbound::Discard);
/// ```
pub struct DeribitProtocol {
    settings: Settings,
    auth: Arc<AuthState>,
    /// The order-book sequences of the current connection. Locked by the
    /// connection thread (classify, resubscribe) and by callers' threads
    /// ((un)subscribe requests), each time for a few map operations.
    books: Mutex<BookSequences>,
}

impl Clone for DeribitProtocol {
    /// The same settings and token store; the order-book state starts empty,
    /// since sequence numbers belong to one connection and a clone may be
    /// installed on another.
    fn clone(&self) -> Self {
        DeribitProtocol {
            settings: self.settings.clone(),
            auth: self.auth.clone(),
            books: Mutex::new(BookSequences::default()),
        }
    }
}

impl fmt::Debug for DeribitProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeribitProtocol")
            .field("credentials", &self.settings.credentials)
            .field("heartbeat_interval", &self.settings.heartbeat_interval)
            .field("cancel_on_disconnect", &self.settings.cancel_on_disconnect)
            .field("authenticated", &self.auth.tokens.lock().is_some())
            .field("books", &self.books.lock().len())
            .finish()
    }
}

impl Default for DeribitProtocol {
    /// Public access only, heartbeat every 30 s.
    fn default() -> Self {
        let (auth, _) = AuthState::new();
        DeribitProtocol {
            settings: Settings {
                credentials: None,
                heartbeat_interval: Duration::from_secs(30),
                cancel_on_disconnect: false,
                debug: false,
            },
            auth,
            books: Mutex::new(BookSequences::default()),
        }
    }
}

impl DeribitProtocol {
    /// The dialect for `config` (its credentials, heartbeat and
    /// cancel-on-disconnect settings), with its own token store.
    pub fn new(config: &DeribitConfig) -> Self {
        let (auth, _) = AuthState::new();
        DeribitProtocol::with_state(config, auth)
    }

    pub(super) fn with_state(config: &DeribitConfig, auth: Arc<AuthState>) -> Self {
        DeribitProtocol {
            settings: Settings {
                credentials: config.credentials.clone(),
                heartbeat_interval: config.heartbeat_interval,
                cancel_on_disconnect: config.cancel_on_disconnect,
                debug: config.client.debug,
            },
            auth,
            books: Mutex::new(BookSequences::default()),
        }
    }

    /// The tokens of the last successful authentication (or refresh), if any.
    pub fn tokens(&self) -> Option<Tokens> {
        self.auth.tokens()
    }

    fn channel_request(&self, op: &str, channels: &[String], id: &RequestId) -> Request {
        let scope = if channels.iter().any(|c| is_private_channel(c)) {
            "private"
        } else {
            "public"
        };
        Request::new(
            id.clone(),
            format!("{scope}/{op}"),
            json!({ "channels": channels }),
        )
    }

    fn debug(&self, what: std::fmt::Arguments<'_>) {
        if self.settings.debug {
            log::debug!(target: "zen_websocket", "deribit: {what}");
        }
    }
}

impl Protocol for DeribitProtocol {
    /// Also tells the order-book check that a snapshot is coming for each
    /// `book.*` channel (the request is built just before it is sent).
    fn subscribe_request(&self, channels: &[String], id: &RequestId) -> Request {
        let mut books = self.books.lock();
        for c in channels {
            books.subscribing(c);
        }
        drop(books);
        self.channel_request("subscribe", channels, id)
    }

    /// Also forgets the order-book state of `channels`.
    fn unsubscribe_request(&self, channels: &[String], id: &RequestId) -> Request {
        let mut books = self.books.lock();
        for c in channels {
            books.unsubscribed(c);
        }
        drop(books);
        self.channel_request("unsubscribe", channels, id)
    }

    /// Deribit's (un)subscribe result is the list of channels.
    fn confirmed_channels(&self, result: &Value) -> Option<Vec<String>> {
        channel_list(result)
    }

    fn classify(&self, _text: &str, parsed: Option<&Value>) -> Inbound {
        match codes::classify_value(parsed) {
            // Only books are sequenced: a ticker stream never takes the lock.
            Inbound::Subscription { channel, data } if is_book_channel(&channel) => {
                let verdict = self.books.lock().check(&channel, &data);
                match verdict {
                    Verdict::Deliver => Inbound::Subscription { channel, data },
                    Verdict::Gap { expected, received } => {
                        self.debug(format_args!(
                            "{channel}: gap (prev_change_id {received}, last change_id {expected})"
                        ));
                        Inbound::SequenceGap {
                            channel,
                            expected,
                            received,
                        }
                    }
                    Verdict::Stale => Inbound::Discard,
                }
            }
            other => other,
        }
    }

    fn on_connect(&self, session: &mut dyn Session) -> Result<()> {
        // A new connection: every subscription (the restore that follows
        // included) starts with its own snapshot.
        self.books.lock().clear();
        if let Some(c) = &self.settings.credentials {
            let params = json!({
                "grant_type": "client_credentials",
                "client_id": c.client_id(),
                "client_secret": c.client_secret(),
            });
            let result = session
                .request("public/auth", params)
                .map_err(map_rpc_error)?;
            let tokens = Tokens::from_result(&result, Instant::now())?;
            self.debug(format_args!(
                "authenticated as {} (scope `{}`, expires in {:?})",
                c.client_id(),
                tokens.scope,
                tokens.expires_in
            ));
            self.auth.store(tokens, true);
        }
        // Deribit takes whole seconds; the builder guarantees at least 10.
        let interval = self.settings.heartbeat_interval.as_secs();
        session
            .request("public/set_heartbeat", json!({ "interval": interval }))
            .map_err(map_rpc_error)?;
        if self.settings.cancel_on_disconnect {
            session
                .request(
                    "private/enable_cancel_on_disconnect",
                    json!({ "scope": "connection" }),
                )
                .map_err(map_rpc_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCategory;
    use std::collections::VecDeque;

    /// A scripted session: answers requests in order, records them.
    struct Script {
        answers: VecDeque<Result<Value>>,
        seen: Vec<(String, Value)>,
    }

    impl Session for Script {
        fn request(&mut self, method: &str, params: Value) -> Result<Value> {
            self.seen.push((method.to_owned(), params));
            self.answers
                .pop_front()
                .unwrap_or(Err(Error::Timeout(crate::TimeoutKind::Request)))
        }
        fn send_text(&mut self, _text: &str) -> Result<()> {
            Ok(())
        }
    }

    fn script(answers: Vec<Result<Value>>) -> Script {
        Script {
            answers: answers.into(),
            seen: Vec::new(),
        }
    }

    fn auth_result() -> Value {
        json!({"access_token": "tok-access-1", "refresh_token": "tok-refresh-1", "expires_in": 900,
               "scope": "connection", "token_type": "bearer"})
    }

    fn config(cancel: bool) -> DeribitConfig {
        DeribitConfig::builder()
            .credentials("id", "s3cr3t-value")
            .cancel_on_disconnect(cancel)
            .build()
            .unwrap()
    }

    #[test]
    fn on_connect_authenticates_then_sets_the_heartbeat_then_cancel_on_disconnect() {
        let (auth, wake) = AuthState::new();
        let p = DeribitProtocol::with_state(&config(true), auth);
        let mut s = script(vec![Ok(auth_result()), Ok(json!("ok")), Ok(json!("ok"))]);
        p.on_connect(&mut s).unwrap();
        let methods: Vec<&str> = s.seen.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(
            methods,
            [
                "public/auth",
                "public/set_heartbeat",
                "private/enable_cancel_on_disconnect"
            ]
        );
        assert_eq!(s.seen[0].1["grant_type"], "client_credentials");
        assert_eq!(s.seen[1].1, json!({"interval": 30}));
        let t = p.tokens().unwrap();
        assert_eq!(
            (t.access_token(), t.refresh_token()),
            ("tok-access-1", "tok-refresh-1")
        );
        assert_eq!(t.expires_in(), Duration::from_secs(900));
        assert!(wake.try_recv().is_ok(), "the refresh thread is woken");
    }

    #[test]
    fn without_credentials_only_the_heartbeat_is_set() {
        let p = DeribitProtocol::new(&DeribitConfig::builder().build().unwrap());
        let mut s = script(vec![Ok(json!("ok"))]);
        p.on_connect(&mut s).unwrap();
        assert_eq!(s.seen.len(), 1);
        assert_eq!(s.seen[0].0, "public/set_heartbeat");
        assert!(p.tokens().is_none());
    }

    #[test]
    fn a_refused_or_malformed_auth_is_an_auth_error_and_stops_the_opening() {
        let p = DeribitProtocol::new(&config(false));
        let refused = Err(Error::Rpc {
            code: 13004,
            message: "invalid_credentials".into(),
            data: None,
        });
        let mut s = script(vec![refused]);
        let e = p.on_connect(&mut s).unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Auth);
        assert_eq!(s.seen.len(), 1);

        for bad in [
            json!({}),
            json!({"access_token": "at", "expires_in": 1}),
            json!({"access_token": "", "refresh_token": "rt", "expires_in": 1}),
            json!({"access_token": "at", "refresh_token": "rt", "expires_in": "soon"}),
            json!(null),
        ] {
            let mut s = script(vec![Ok(bad.clone())]);
            let e = p.on_connect(&mut s).unwrap_err();
            assert!(matches!(e, Error::Auth { .. }), "{bad}: {e:?}");
        }
        assert!(p.tokens().is_none());
    }

    #[test]
    fn refresh_is_due_at_80_percent_of_expiry_but_never_before_a_second() {
        let (auth, _) = AuthState::new();
        assert_eq!(auth.refresh_due(), None);
        let now = Instant::now();
        let mut r = auth_result();
        auth.store(Tokens::from_result(&r, now).unwrap(), false);
        assert_eq!(auth.refresh_due(), Some(now + Duration::from_secs(720)));
        r["expires_in"] = json!(0.5);
        auth.store(Tokens::from_result(&r, now).unwrap(), false);
        assert_eq!(auth.refresh_due(), Some(now + MIN_REFRESH_DELAY));
        r["expires_in"] = json!(1e300);
        auth.store(Tokens::from_result(&r, now).unwrap(), false);
        assert!(auth.refresh_due().is_some());
    }

    #[test]
    fn book_state_starts_over_on_every_connect_and_clones_start_empty() {
        let p = DeribitProtocol::default();
        let book = "book.BTC-PERPETUAL.100ms".to_string();
        let note = |p: &DeribitProtocol, data: Value| {
            let v = json!({"method": "subscription", "params": {"channel": book, "data": data}});
            p.classify(&v.to_string(), Some(&v))
        };
        p.subscribe_request(std::slice::from_ref(&book), &RequestId::Number(1));
        note(&p, json!({"type": "snapshot", "change_id": 5}));
        assert_eq!(p.books.lock().len(), 1);
        assert_eq!(p.clone().books.lock().len(), 0);
        p.on_connect(&mut script(vec![Ok(json!("ok"))])).unwrap();
        assert_eq!(p.books.lock().len(), 0);
        // Nothing known: a change is delivered unchecked, not a gap.
        assert!(matches!(
            note(
                &p,
                json!({"type": "change", "prev_change_id": 8, "change_id": 9})
            ),
            Inbound::Subscription { .. }
        ));
        // An unsubscribe forgets the channel too.
        p.subscribe_request(std::slice::from_ref(&book), &RequestId::Number(2));
        assert_eq!(
            note(
                &p,
                json!({"type": "change", "prev_change_id": 9, "change_id": 10})
            ),
            Inbound::Discard
        );
        p.unsubscribe_request(std::slice::from_ref(&book), &RequestId::Number(3));
        assert_eq!(p.books.lock().len(), 0);
    }

    #[test]
    fn channel_scope_picks_the_method() {
        let p = DeribitProtocol::default();
        let id = RequestId::Number(4);
        let public = vec!["book.BTC-PERPETUAL.100ms".to_string()];
        let private = vec!["user.portfolio.btc".to_string()];
        assert_eq!(
            p.unsubscribe_request(&public, &id).method,
            "public/unsubscribe"
        );
        let r = p.unsubscribe_request(&private, &id);
        assert_eq!(r.method, "private/unsubscribe");
        assert_eq!(r.params, json!({"channels": ["user.portfolio.btc"]}));
        assert_eq!(
            p.confirmed_channels(&json!(["a"])),
            Some(vec!["a".to_string()])
        );
    }

    #[test]
    fn debug_output_hides_tokens_and_secrets() {
        let p = DeribitProtocol::new(&config(false));
        let mut s = script(vec![Ok(auth_result()), Ok(json!("ok"))]);
        p.on_connect(&mut s).unwrap();
        let shown = format!("{p:?} {:?}", p.tokens().unwrap());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            !shown.contains("tok-access") && !shown.contains("tok-refresh"),
            "{shown}"
        );
    }

    #[test]
    fn map_rpc_error_types_deribit_codes() {
        let rpc = |code| Error::Rpc {
            code,
            message: "m".into(),
            data: None,
        };
        assert!(matches!(
            map_rpc_error(rpc(10028)),
            Error::RateLimited { .. }
        ));
        assert!(matches!(map_rpc_error(rpc(13009)), Error::Auth { .. }));
        assert!(matches!(
            map_rpc_error(rpc(11050)),
            Error::Rpc { code: 11050, .. }
        ));
    }
}
