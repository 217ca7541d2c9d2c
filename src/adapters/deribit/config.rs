//! [`DeribitConfig`] and its builder: where to connect, the API credentials,
//! the platform heartbeat, and the options of the underlying client.

use std::fmt;
use std::time::Duration;

use crate::rate_limit::RateLimit;
use crate::{Config, ConfigBuilder, ConfigError};

/// Deribit's test network (the default URL): fake money, real API.
pub const TESTNET_URL: &str = "wss://test.deribit.com/ws/api/v2";
/// Deribit's production network.
pub const MAINNET_URL: &str = "wss://www.deribit.com/ws/api/v2";

/// The shortest interval `public/set_heartbeat` accepts (Deribit's rule).
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// A Deribit API key: the client id and its secret.
///
/// `Debug` shows the client id (it names the key, it does not unlock it) and
/// never the secret.
///
/// ```
/// use zen_websocket::adapters::deribit::Credentials;
///
/// let c = Credentials::new("my-id", "my-secret");
/// assert_eq!(c.client_id(), "my-id");
/// let shown = format!("{c:?}");
/// assert!(shown.contains("my-id") && !shown.contains("my-secret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    client_id: String,
    client_secret: String,
}

impl Credentials {
    /// A key from its client id and client secret.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Credentials {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
        }
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client secret. Keep it out of logs.
    pub fn client_secret(&self) -> &str {
        &self.client_secret
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .finish()
    }
}

/// A change to the underlying client's [`ConfigBuilder`], applied at
/// [`DeribitConfigBuilder::build`].
type ClientOption = Box<dyn FnOnce(ConfigBuilder) -> ConfigBuilder + Send>;

/// The validated configuration of a [`DeribitClient`](super::DeribitClient).
///
/// ```
/// use std::time::Duration;
/// use zen_websocket::adapters::deribit::{DeribitConfig, TESTNET_URL};
///
/// let config = DeribitConfig::builder()
///     .credentials("my-id", "my-secret")
///     .heartbeat_interval(Duration::from_secs(15))
///     .cancel_on_disconnect(true)
///     // Options of the underlying client (reconnection, timeouts, TLS, rate limit):
///     .client_options(|b| b.connect_timeout(Duration::from_secs(3)))
///     .build()?;
/// assert_eq!(config.url(), TESTNET_URL);
/// assert!(!format!("{config:?}").contains("my-secret"));
///
/// // Deribit refuses heartbeats below 10 s; so does the builder, naming the field.
/// let err = DeribitConfig::builder().heartbeat_interval(Duration::from_secs(5)).build();
/// assert_eq!(err.unwrap_err().field, "heartbeat_interval");
/// # Ok::<(), zen_websocket::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct DeribitConfig {
    pub(super) url: String,
    pub(super) credentials: Option<Credentials>,
    pub(super) heartbeat_interval: Duration,
    pub(super) cancel_on_disconnect: bool,
    /// The underlying client's validated configuration, without the protocol:
    /// each connect installs a fresh [`DeribitProtocol`](super::DeribitProtocol)
    /// so that two clients made from one config never share tokens.
    pub(super) client: Config,
}

impl fmt::Debug for DeribitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeribitConfig")
            .field("url", &self.url)
            .field("credentials", &self.credentials)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("cancel_on_disconnect", &self.cancel_on_disconnect)
            .field("client", &self.client)
            .finish()
    }
}

impl DeribitConfig {
    /// Start building a configuration (every default, see [`DeribitConfigBuilder`]).
    pub fn builder() -> DeribitConfigBuilder {
        DeribitConfigBuilder::default()
    }

    /// The URL connected to, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The credentials, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The interval asked for with `public/set_heartbeat`.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// Whether `private/enable_cancel_on_disconnect` is sent on every connect.
    pub fn cancel_on_disconnect(&self) -> bool {
        self.cancel_on_disconnect
    }

    /// The underlying client's configuration (without the Deribit protocol,
    /// which each connect adds).
    pub fn client_config(&self) -> &Config {
        &self.client
    }
}

/// Builds a [`DeribitConfig`]; every setter documents its default, and
/// [`build`](Self::build) validates everything once.
pub struct DeribitConfigBuilder {
    url: String,
    credentials: Option<Credentials>,
    heartbeat_interval: Duration,
    cancel_on_disconnect: bool,
    client_options: Vec<ClientOption>,
}

impl Default for DeribitConfigBuilder {
    fn default() -> Self {
        DeribitConfigBuilder {
            url: TESTNET_URL.to_owned(),
            credentials: None,
            heartbeat_interval: Duration::from_secs(30),
            cancel_on_disconnect: false,
            client_options: Vec::new(),
        }
    }
}

impl fmt::Debug for DeribitConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeribitConfigBuilder")
            .field("url", &self.url)
            .field("credentials", &self.credentials)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("cancel_on_disconnect", &self.cancel_on_disconnect)
            .field("client_options", &self.client_options.len())
            .finish()
    }
}

impl DeribitConfigBuilder {
    /// The WebSocket URL. Any `ws://` or `wss://` URL is accepted (a local
    /// `testing::DeribitServer` (feature `testing`), a proxy, [`MAINNET_URL`]).
    /// Defaults to [`TESTNET_URL`].
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Authenticate with this API key (`public/auth`, grant
    /// `client_credentials`) on every connect, and keep the tokens fresh.
    /// Defaults to none: public methods and channels only.
    pub fn credentials(mut self, client_id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::new(client_id, secret));
        self
    }

    /// The interval of Deribit's platform heartbeat (`public/set_heartbeat`):
    /// the server sends a `test_request` that often and the client answers it
    /// with `public/test` by itself. Whole seconds are sent (the fraction is
    /// dropped); at least [`MIN_HEARTBEAT_INTERVAL`]. This is not the
    /// WebSocket ping of the client, which [`client_options`](Self::client_options)
    /// sets. Defaults to 30 s.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Send `private/enable_cancel_on_disconnect` on every connect, so that
    /// Deribit cancels this connection's orders when it drops. Needs
    /// credentials. Defaults to `false`.
    pub fn cancel_on_disconnect(mut self, on: bool) -> Self {
        self.cancel_on_disconnect = on;
        self
    }

    /// Change the underlying client's options (reconnection, timeouts, TLS
    /// roots, rate limit, event channel, …). `f` receives a builder seeded
    /// with this adapter's defaults, which it may override:
    /// `retry_count(None)` (reconnect forever: a trading connection must come
    /// back) and [`RateLimit::deribit_non_matching_engine`]. Several calls
    /// apply in order. The protocol is always the Deribit one. Defaults to
    /// those two settings and the client's own defaults.
    ///
    /// ```
    /// use std::time::Duration;
    /// use zen_websocket::adapters::deribit::DeribitConfig;
    /// use zen_websocket::rate_limit::RateLimit;
    ///
    /// let config = DeribitConfig::builder()
    ///     .client_options(|b| {
    ///         b.retry_count(Some(10))
    ///             .request_timeout(Duration::from_secs(5))
    ///             .rate_limit(RateLimit::deribit_matching_engine())
    ///     })
    ///     .build()?;
    /// assert_eq!(config.client_config().request_timeout_value(), Duration::from_secs(5));
    /// # Ok::<(), zen_websocket::ConfigError>(())
    /// ```
    pub fn client_options(
        mut self,
        f: impl FnOnce(ConfigBuilder) -> ConfigBuilder + Send + 'static,
    ) -> Self {
        self.client_options.push(Box::new(f));
        self
    }

    /// Validate and build. The error names the field and the rule: `url`,
    /// `credentials` (empty id or secret), `heartbeat_interval` (below 10 s),
    /// `cancel_on_disconnect` (without credentials), or any field of the
    /// client's [`Config`].
    pub fn build(self) -> Result<DeribitConfig, ConfigError> {
        if let Some(c) = &self.credentials {
            if c.client_id.is_empty() || c.client_secret.is_empty() {
                return Err(ConfigError::new(
                    "credentials",
                    "client_id and client_secret must not be empty",
                ));
            }
        }
        if self.heartbeat_interval < MIN_HEARTBEAT_INTERVAL {
            return Err(ConfigError::new(
                "heartbeat_interval",
                format!(
                    "must be at least {MIN_HEARTBEAT_INTERVAL:?} (Deribit's minimum for public/set_heartbeat), got {:?}",
                    self.heartbeat_interval
                ),
            ));
        }
        if self.cancel_on_disconnect && self.credentials.is_none() {
            return Err(ConfigError::new(
                "cancel_on_disconnect",
                "needs credentials (private/enable_cancel_on_disconnect is a private method)",
            ));
        }
        let mut client = Config::builder(self.url.as_str())
            .retry_count(None)
            .rate_limit(RateLimit::deribit_non_matching_engine());
        for option in self.client_options {
            client = option(client);
        }
        let client = client.build()?;
        Ok(DeribitConfig {
            url: self.url,
            credentials: self.credentials,
            heartbeat_interval: self.heartbeat_interval,
            cancel_on_disconnect: self.cancel_on_disconnect,
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_target_the_testnet_and_retry_forever() {
        let c = DeribitConfig::builder().build().unwrap();
        assert_eq!(c.url(), TESTNET_URL);
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(30));
        assert!(!c.cancel_on_disconnect());
        assert!(c.credentials().is_none());
        assert_eq!(c.client.retry_count, None);
        let limit = c.client.extension.rate_limit.as_ref().unwrap();
        assert_eq!(
            limit.capacity,
            RateLimit::deribit_non_matching_engine().capacity
        );
    }

    #[test]
    fn client_options_override_the_adapter_defaults_in_order() {
        let c = DeribitConfig::builder()
            .client_options(|b| b.retry_count(Some(2)))
            .client_options(|b| b.retry_count(Some(5)).rate_limit(RateLimit::new(1.0, 1.0)))
            .build()
            .unwrap();
        assert_eq!(c.client.retry_count, Some(5));
        assert_eq!(
            c.client.extension.rate_limit.as_ref().unwrap().capacity,
            1.0
        );
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let field = |b: DeribitConfigBuilder| b.build().unwrap_err().field;
        assert_eq!(
            field(DeribitConfig::builder().heartbeat_interval(Duration::from_millis(9999))),
            "heartbeat_interval"
        );
        assert_eq!(
            field(DeribitConfig::builder().cancel_on_disconnect(true)),
            "cancel_on_disconnect"
        );
        assert_eq!(
            field(DeribitConfig::builder().credentials("", "s")),
            "credentials"
        );
        assert_eq!(field(DeribitConfig::builder().url("https://x")), "url");
        assert_eq!(
            field(DeribitConfig::builder().client_options(|b| b.event_capacity(0))),
            "event_capacity"
        );
        assert!(DeribitConfig::builder()
            .heartbeat_interval(MIN_HEARTBEAT_INTERVAL)
            .build()
            .is_ok());
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let b = DeribitConfig::builder().credentials("id-1", "very-secret-value");
        assert!(!format!("{b:?}").contains("very-secret-value"));
        let c = b.build().unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("id-1"), "{shown}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
        assert!(shown.contains("[REDACTED]"), "{shown}");
    }
}
