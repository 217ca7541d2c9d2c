//! Client configuration: one [`Config`], one [`ConfigBuilder`], validated once in
//! [`ConfigBuilder::build`].

use std::fmt;
use std::time::Duration;

use crate::error::ConfigError;

/// What the connection thread does when the event channel is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EventPolicy {
    /// Wait until the consumer makes room: nothing is lost, and TCP pushes back on
    /// the server. The default.
    #[default]
    Block,
    /// Drop the newest message and count it in [`crate::ClientStats::dropped_events`].
    /// Lifecycle events are never dropped.
    DropNewest,
}

/// A parsed and validated `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `true` for `wss://`.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (default 80 for ws, 443 for wss).
    pub port: u16,
    /// Path and query string, starting with `/`.
    pub path_and_query: String,
}

impl Endpoint {
    /// Parse and validate a WebSocket URL. The query string is kept.
    pub fn parse(url: &str) -> Result<Endpoint, ConfigError> {
        let rule = |r: &str| ConfigError::new("url", format!("{r} (got `{url}`)"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| rule("must start with ws:// or wss://"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "ws" => false,
            "wss" => true,
            _ => return Err(rule("scheme must be ws or wss")),
        };
        if rest.contains('#') {
            return Err(rule("must not contain a fragment (#)"));
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(split);
        if authority.contains('@') {
            return Err(rule(
                "must not contain user info (put credentials in headers)",
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| rule("has an unterminated IPv6 address"))?;
            // Only an IPv6 address goes in brackets (a `%zone` suffix allowed).
            let addr = h.split_once('%').map_or(h, |(a, _)| a);
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(rule("has an invalid IPv6 address in brackets"));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| rule("has junk after ]"))?,
                ),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(rule("must have a host"));
        }
        if host.contains(['[', ']']) || (!authority.starts_with('[') && host.contains(':')) {
            return Err(rule("host has invalid characters"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>\"{}|\\^`".contains(c))
        {
            return Err(rule("host has invalid characters"));
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(rule("port must be a number from 1 to 65535")),
                Ok(p) => p,
            },
        };
        if tail.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(rule("path must not contain spaces or control characters"));
        }
        let path_and_query = if tail.is_empty() {
            "/".to_string()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_string()
        };
        Ok(Endpoint {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    /// The URL in canonical form.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{}", self.port, self.path_and_query)
    }
}

/// TLS options for `wss://`.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// Extra root certificates (PEM or DER) trusted beside the system roots.
    pub root_certificates: Vec<Vec<u8>>,
    /// Accept any certificate and host name. Dangerous: only for tests against a server
    /// you control.
    pub danger_accept_invalid_certs: bool,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("root_certificates", &self.root_certificates.len())
            .field(
                "danger_accept_invalid_certs",
                &self.danger_accept_invalid_certs,
            )
            .finish()
    }
}

/// A validated client configuration. Build one with [`Config::builder`].
///
/// ```
/// use std::time::Duration;
/// use zen_websocket::Config;
///
/// let config = Config::builder("wss://example.com/ws?v=2")
///     .header("X-Client", "zen")
///     .connect_timeout(Duration::from_secs(3))
///     .retry_count(None) // reconnect forever
///     .build()?;
/// assert_eq!(config.endpoint().path_and_query, "/ws?v=2");
///
/// let err = Config::builder("http://example.com").build().unwrap_err();
/// assert_eq!(err.field, "url");
/// # Ok::<(), zen_websocket::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) endpoint: Endpoint,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) connect_timeout: Duration,
    pub(crate) retry_count: Option<u32>,
    pub(crate) retry_delay: Duration,
    pub(crate) max_retry_delay: Duration,
    pub(crate) stable_after: Duration,
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) reconnect_on_error: bool,
    pub(crate) restore_subscriptions: bool,
    pub(crate) request_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) debug: bool,
    pub(crate) tls: TlsOptions,
    pub(crate) read_buffer_size: usize,
    pub(crate) write_buffer_size: usize,
    pub(crate) max_message_size: usize,
    pub(crate) event_capacity: usize,
    pub(crate) event_policy: EventPolicy,
    pub(crate) thread_stack_size: usize,
    pub(crate) extension: crate::client::Extensions,
}

impl fmt::Debug for Config {
    // Header values may carry credentials: print names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Config")
            .field("url", &self.endpoint.url())
            .field("headers", &names)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry_count", &self.retry_count)
            .field("retry_delay", &self.retry_delay)
            .field("max_retry_delay", &self.max_retry_delay)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("reconnect_on_error", &self.reconnect_on_error)
            .field("event_capacity", &self.event_capacity)
            .field("event_policy", &self.event_policy)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Start building a configuration for `url`.
    pub fn builder(url: impl Into<String>) -> ConfigBuilder {
        ConfigBuilder {
            url: url.into(),
            config: ConfigDefaults::default().0,
        }
    }

    /// A configuration for `url` with every default.
    pub fn new(url: impl Into<String>) -> Result<Config, ConfigError> {
        Config::builder(url).build()
    }

    /// The validated endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The URL, in canonical form.
    pub fn url(&self) -> String {
        self.endpoint.url()
    }

    /// The configured connect timeout.
    pub fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    /// The configured request timeout.
    pub fn request_timeout_value(&self) -> Duration {
        self.request_timeout
    }

    /// A builder seeded with this configuration, to derive a variant.
    pub fn to_builder(&self) -> ConfigBuilder {
        ConfigBuilder {
            url: self.endpoint.url(),
            config: self.clone(),
        }
    }
}

/// Every default in one place.
struct ConfigDefaults(Config);

impl Default for ConfigDefaults {
    fn default() -> Self {
        ConfigDefaults(Config {
            endpoint: Endpoint {
                tls: false,
                host: String::new(),
                port: 80,
                path_and_query: "/".into(),
            },
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            retry_count: Some(3),
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            heartbeat_interval: Some(Duration::from_secs(30)),
            heartbeat_timeout: Duration::from_secs(10),
            reconnect_on_error: true,
            restore_subscriptions: true,
            request_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
            debug: false,
            tls: TlsOptions::default(),
            read_buffer_size: 8 * 1024,
            write_buffer_size: 0,
            max_message_size: 64 << 20,
            event_capacity: 256,
            event_policy: EventPolicy::Block,
            thread_stack_size: 256 * 1024,
            extension: crate::client::Extensions::default(),
        })
    }
}

/// Builds a [`Config`]; every setter documents its default.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    url: String,
    config: Config,
}

impl ConfigBuilder {
    /// Add a header to the upgrade request. Names and values are validated in
    /// [`build`](Self::build). Defaults to no headers.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.headers.push((name.into(), value.into()));
        self
    }

    /// Bound on TCP connect, TLS handshake and upgrade together. Defaults to 5 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// Reconnection attempts before giving up; `None` retries forever. Defaults to `Some(3)`.
    pub fn retry_count(mut self, n: Option<u32>) -> Self {
        self.config.retry_count = n;
        self
    }

    /// Base delay of the exponential backoff. Defaults to 1 s.
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.config.retry_delay = d;
        self
    }

    /// Cap of the backoff delay. Defaults to 30 s.
    pub fn max_retry_delay(mut self, d: Duration) -> Self {
        self.config.max_retry_delay = d;
        self
    }

    /// How long a connection must stay up before the retry counter resets. Defaults to 30 s.
    pub fn stable_after(mut self, d: Duration) -> Self {
        self.config.stable_after = d;
        self
    }

    /// Interval between pings; `None` disables heartbeats. Defaults to 30 s.
    pub fn heartbeat_interval(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.config.heartbeat_interval = d.into();
        self
    }

    /// How long to wait for a pong before the peer counts as dead. Defaults to 10 s.
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.config.heartbeat_timeout = d;
        self
    }

    /// Reconnect automatically after a recoverable error. Defaults to `true`.
    pub fn reconnect_on_error(mut self, on: bool) -> Self {
        self.config.reconnect_on_error = on;
        self
    }

    /// Restore tracked subscriptions after a reconnect. Defaults to `true`.
    pub fn restore_subscriptions(mut self, on: bool) -> Self {
        self.config.restore_subscriptions = on;
        self
    }

    /// Default timeout of [`crate::Client::request`]. Defaults to 30 s.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.config.request_timeout = d;
        self
    }

    /// How long `close()` waits for the peer's close reply. Defaults to 2 s.
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.config.close_timeout = d;
        self
    }

    /// Bound on one blocking write (a peer that stops reading). Defaults to 10 s.
    pub fn write_timeout(mut self, d: Duration) -> Self {
        self.config.write_timeout = d;
        self
    }

    /// Verbose connection logs (target `zen_websocket`, level debug). Defaults to `false`.
    pub fn debug(mut self, on: bool) -> Self {
        self.config.debug = on;
        self
    }

    /// Trust an extra root certificate (PEM or DER) beside the system roots.
    /// Defaults to none.
    pub fn root_certificate(mut self, cert: impl Into<Vec<u8>>) -> Self {
        self.config.tls.root_certificates.push(cert.into());
        self
    }

    /// Accept invalid certificates and host names. **Dangerous**: anyone on the path can
    /// read and change the traffic. Only for tests. Defaults to `false`.
    pub fn danger_accept_invalid_certs(mut self, on: bool) -> Self {
        self.config.tls.danger_accept_invalid_certs = on;
        self
    }

    /// Initial read buffer of the socket, in bytes. Defaults to 8 KiB (small, so a
    /// pool of thousands stays small; raise it for floods).
    pub fn read_buffer_size(mut self, n: usize) -> Self {
        self.config.read_buffer_size = n;
        self
    }

    /// Bytes buffered before a write goes out; 0 writes every message at once.
    /// Defaults to 0 (every send is flushed anyway).
    pub fn write_buffer_size(mut self, n: usize) -> Self {
        self.config.write_buffer_size = n;
        self
    }

    /// Largest inbound message (and frame) accepted; a larger one is a protocol
    /// error. Defaults to 64 MiB.
    pub fn max_message_size(mut self, n: usize) -> Self {
        self.config.max_message_size = n;
        self
    }

    /// Capacity of the event channel (its slots are allocated up front, about
    /// 70 bytes each). Defaults to 256.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.config.event_capacity = n;
        self
    }

    /// What happens when the event channel is full. Defaults to [`EventPolicy::Block`].
    pub fn event_policy(mut self, p: EventPolicy) -> Self {
        self.config.event_policy = p;
        self
    }

    /// Stack size of the connection thread. Defaults to 256 KiB.
    pub fn thread_stack_size(mut self, n: usize) -> Self {
        self.config.thread_stack_size = n;
        self
    }

    pub(crate) fn extensions(&mut self) -> &mut crate::client::Extensions {
        &mut self.config.extension
    }

    /// Validate and build. The error names the field and the rule.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut c = self.config;
        c.endpoint = Endpoint::parse(&self.url)?;
        for (name, value) in &c.headers {
            if tungstenite::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    "header",
                    format!("`{name}` is not a valid HTTP header name"),
                ));
            }
            if tungstenite::http::HeaderValue::from_str(value).is_err() {
                // Never echo the value: it may be a credential.
                return Err(ConfigError::new(
                    "header",
                    format!("the value of `{name}` is not a valid HTTP header value (it holds control characters such as CR or LF)"),
                ));
            }
        }
        positive("connect_timeout", c.connect_timeout)?;
        positive("retry_delay", c.retry_delay)?;
        positive("max_retry_delay", c.max_retry_delay)?;
        positive("stable_after", c.stable_after)?;
        positive("heartbeat_timeout", c.heartbeat_timeout)?;
        positive("request_timeout", c.request_timeout)?;
        positive("close_timeout", c.close_timeout)?;
        positive("write_timeout", c.write_timeout)?;
        if let Some(h) = c.heartbeat_interval {
            positive("heartbeat_interval", h)?;
        }
        if c.max_retry_delay < c.retry_delay {
            return Err(ConfigError::new(
                "max_retry_delay",
                "must be at least retry_delay",
            ));
        }
        if c.retry_count == Some(0) && c.reconnect_on_error {
            // Allowed: zero retries means "report and stop"; nothing to check.
        }
        if c.read_buffer_size < 256 {
            return Err(ConfigError::new(
                "read_buffer_size",
                "must be at least 256 bytes",
            ));
        }
        if c.max_message_size == 0 {
            return Err(ConfigError::new(
                "max_message_size",
                "must be greater than zero",
            ));
        }
        if c.event_capacity == 0 {
            return Err(ConfigError::new(
                "event_capacity",
                "must be greater than zero",
            ));
        }
        if c.thread_stack_size < 64 * 1024 {
            return Err(ConfigError::new(
                "thread_stack_size",
                "must be at least 64 KiB",
            ));
        }
        c.extension.validate()?;
        Ok(c)
    }
}

fn positive(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::new(field, "must be greater than zero"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(b: ConfigBuilder) -> &'static str {
        b.build().expect_err("should be invalid").field
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::new("ws://localhost").unwrap();
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.retry_count, Some(3));
        assert_eq!(c.retry_delay, Duration::from_secs(1));
        assert_eq!(c.max_retry_delay, Duration::from_secs(30));
        assert_eq!(c.heartbeat_interval, Some(Duration::from_secs(30)));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert!(c.reconnect_on_error && c.restore_subscriptions && !c.debug);
        assert!(c.headers.is_empty());
    }

    #[test]
    fn urls_keep_their_query_and_get_default_ports() {
        let e = Endpoint::parse("wss://api.example.com/ws/v2?a=1&b=2").unwrap();
        assert!(e.tls);
        assert_eq!(e.port, 443);
        assert_eq!(e.path_and_query, "/ws/v2?a=1&b=2");
        let e = Endpoint::parse("ws://127.0.0.1:9001?x=y").unwrap();
        assert_eq!((e.port, e.path_and_query.as_str()), (9001, "/?x=y"));
        let e = Endpoint::parse("WS://[::1]:8080").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8080));
        assert_eq!(e.url(), "ws://[::1]:8080/");
    }

    #[test]
    fn bad_urls_name_the_url_field_and_the_rule() {
        for (url, rule) in [
            ("http://example.com", "scheme"),
            ("example.com", "ws://"),
            ("ws://", "host"),
            ("ws://:80/", "host"),
            ("ws://host:0", "port"),
            ("ws://host:99999", "port"),
            ("ws://host:abc", "port"),
            ("ws://user:pw@host", "user info"),
            ("ws://host/a b", "spaces"),
            ("ws://host/#frag", "fragment"),
            ("ws://[::1", "IPv6"),
        ] {
            let e = Config::new(url).expect_err(url);
            assert_eq!(e.field, "url", "{url}");
            assert!(e.rule.contains(rule), "{url}: {}", e.rule);
        }
    }

    #[test]
    fn zero_durations_are_refused_by_name() {
        let b = || Config::builder("ws://h");
        assert_eq!(
            field_of(b().connect_timeout(Duration::ZERO)),
            "connect_timeout"
        );
        assert_eq!(field_of(b().retry_delay(Duration::ZERO)), "retry_delay");
        assert_eq!(
            field_of(b().heartbeat_interval(Duration::ZERO)),
            "heartbeat_interval"
        );
        assert_eq!(
            field_of(b().heartbeat_timeout(Duration::ZERO)),
            "heartbeat_timeout"
        );
        assert_eq!(
            field_of(b().request_timeout(Duration::ZERO)),
            "request_timeout"
        );
        assert_eq!(field_of(b().event_capacity(0)), "event_capacity");
        assert!(b().heartbeat_interval(None).build().is_ok());
    }

    #[test]
    fn max_retry_delay_must_not_be_below_retry_delay() {
        let e = Config::builder("ws://h")
            .retry_delay(Duration::from_secs(5))
            .max_retry_delay(Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(e.field, "max_retry_delay");
        assert!(e.rule.contains("retry_delay"));
    }

    #[test]
    fn invalid_headers_are_refused_without_echoing_the_value() {
        let e = Config::builder("ws://h")
            .header("Bad Name", "x")
            .build()
            .unwrap_err();
        assert_eq!(e.field, "header");
        let e = Config::builder("ws://h")
            .header("Authorization", "secret\r\nX: y")
            .build()
            .unwrap_err();
        assert_eq!(e.field, "header");
        assert!(!e.rule.contains("secret"));
    }

    #[test]
    fn debug_output_hides_header_values() {
        let c = Config::builder("ws://h")
            .header("Authorization", "Bearer s3cr3t")
            .build()
            .unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("Authorization"));
        assert!(!shown.contains("s3cr3t"));
    }
}
