//! # zen-websocket
//!
//! A synchronous, thread-based WebSocket client for programs that must stay
//! connected for weeks: trading systems, market-data recorders, bots. You call a
//! blocking [`Client::connect`] from a plain thread, send from any thread, and
//! read messages and lifecycle events from a crossbeam [`Receiver`]. There is no
//! async runtime anywhere.
//!
//! What it does for you: reconnection with exponential backoff and jitter,
//! heartbeats that detect a dead peer, categorized errors with a recovery
//! strategy, JSON-RPC 2.0 request correlation, subscription tracking restored
//! after reconnects, a token-bucket rate limiter, session recording to JSONL with
//! replay and cassettes, a health-routed connection pool, and a Deribit adapter.
//!
//! ## A first connection
//!
//! The examples here run against the embedded testing server (feature
//! `testing`), a real WebSocket server on 127.0.0.1 that echoes by default.
//!
//! ```
//! use std::time::Duration;
//! use zen_websocket::{testing::MockServer, Client, Config, Event, Message};
//!
//! let server = MockServer::start()?;
//! let config = Config::builder(server.url())
//!     .connect_timeout(Duration::from_secs(5))
//!     .heartbeat_interval(Duration::from_secs(30))
//!     .build()?;
//! let client = Client::connect(config)?; // blocks until open, or a categorized Error
//! client.send_text("hello")?;
//! for event in client.events().iter() {
//!     match event {
//!         Event::Message(Message::Text(text)) => {
//!             assert_eq!(text, "hello");
//!             break;
//!         }
//!         Event::Reconnecting { attempt, delay, .. } => {
//!             println!("reconnecting (attempt {attempt}) in {delay:?}");
//!         }
//!         _ => {}
//!     }
//! }
//! client.close()?; // close handshake (1000), joins the connection thread
//! # Ok::<(), zen_websocket::Error>(())
//! ```
//!
//! ## Errors
//!
//! Every fallible call returns [`Error`]. [`Error::category`] says what kind of
//! failure it is, [`Error::recovery`] what to do next, and [`Error::explain`]
//! gives a line for a human.
//!
//! ```
//! use zen_websocket::{Config, Error, ErrorCategory, Recovery};
//!
//! let err = Error::from(Config::builder("http://example.com").build().unwrap_err());
//! assert_eq!(err.category(), ErrorCategory::Config);
//! assert_eq!(err.recovery(), Recovery::Stop);
//! assert!(err.explain().contains("url"));
//! ```
//!
//! ## Threads and cloning
//!
//! - Each [`Client`] owns one connection thread, named `zen-ws-conn-<id>`. It
//!   waits on the socket with no lock held, and wakes for data, the next
//!   heartbeat, or `close()`. An idle connection wakes only for heartbeats.
//! - A send is written and flushed by the calling thread under a short lock, so
//!   it reaches the wire before `send_*` returns.
//! - `Client` is `Clone + Send + Sync`; every clone talks to the same
//!   connection. `close()`, or dropping the last clone, performs the close
//!   handshake and joins the thread. No thread outlives its client.
//! - The event channel is bounded. When it is full the connection thread waits
//!   (TCP pushes back on the server), unless [`EventPolicy::DropNewest`] is set.
//!
//! ## Logging
//!
//! All logs go through the [`log`](https://docs.rs/log) crate with the target
//! `zen_websocket`, and the library is quiet by default: `warn` for dangerous
//! settings, `error` for bugs. With [`ConfigBuilder::debug`] on, connection
//! lifecycle lines are logged at `debug`. Header values and credentials never
//! appear in logs.
//!
//! ## What else is in the box
//!
//! - [`protocol`]: JSON-RPC 2.0 types, request correlation
//!   ([`Client::request`]), subscription tracking restored after reconnects
//!   ([`Client::subscribe`]), and the [`protocol::Protocol`] trait for platform
//!   dialects (auth in `on_connect`).
//! - [`rate_limit`]: a token bucket over everything a client sends
//!   ([`ConfigBuilder::rate_limit`]), with Deribit presets.
//! - [`recorder`]: session recording to JSONL ([`ConfigBuilder::record_to`]),
//!   replay, metadata, and cassettes ([`recorder::Cassette`]) for tests.
//! - [`pool`]: supervised clients and health-based routing ([`Pool`]).
//! - [`adapters::deribit`]: the Deribit integration.
//!
//! ## Cargo features
//!
//! - `testing`: the embedded testing servers (`testing::MockServer`, and
//!   `testing::DeribitServer` which speaks enough of Deribit's API for offline
//!   tests) and test certificates, for your own tests. Off by default.
//!
//! [`Receiver`]: crossbeam_channel::Receiver
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

pub mod adapters;
mod client;
mod config;
mod connection;
mod error;
mod message;
pub mod pool;
pub mod protocol;
pub mod rate_limit;
pub mod recorder;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{Client, ClientStats, CloseInitiator, ConnectionState, Event};
pub use config::{Config, ConfigBuilder, Endpoint, EventPolicy, TlsOptions};
pub use connection::backoff::Backoff;
pub use error::{
    ConfigError, Error, ErrorCategory, PoolError, ProtocolError, Recovery, Result, TimeoutKind,
};
pub use message::{close_code, CloseFrame, Message};
pub use pool::{ClientHealth, ClientId, Pool, PoolBuilder, PoolEvent, PoolStats, Supervision};

/// The channel crate of [`Client::events`], re-exported so that your code uses
/// the same version.
pub use crossbeam_channel;

/// The guides under `docs/` are compiled and run as doc tests, so their code
/// stays true.
#[cfg(doctest)]
mod guides {
    #[doc = include_str!("../docs/performance-tuning.md")]
    struct PerformanceTuning;
    #[doc = include_str!("../docs/troubleshooting-reconnection.md")]
    struct TroubleshootingReconnection;
    #[doc = include_str!("../docs/recording-format.md")]
    struct RecordingFormat;
    #[doc = include_str!("../docs/building-adapters.md")]
    struct BuildingAdapters;
}
