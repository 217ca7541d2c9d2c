//! The Deribit integration (JSON-RPC 2.0 over WebSocket).
//!
//! - [`DeribitClient`]: connect, authenticate, keep the tokens fresh, call
//!   methods, subscribe; everything is restored after a reconnect
//!   (authentication first, then subscriptions).
//! - [`DeribitConfig`]: URL (the testnet by default), credentials, the platform
//!   heartbeat, cancel-on-disconnect, and the underlying client's options.
//! - [`DeribitProtocol`]: the dialect alone, for a plain [`Client`](crate::Client).
//! - [`codes`]: the pure parts: error-code mapping and message classification.
//!
//! Order books (`book.*`) are checked for gaps: a change whose
//! `prev_change_id` is not the last `change_id` is reported as
//! [`Event::SequenceGap`](crate::Event::SequenceGap), and the channel is
//! resubscribed for a fresh snapshot (see [`DeribitProtocol`]).
//!
//! ```
//! use std::time::Duration;
//! use serde_json::json;
//! use zen_websocket::adapters::deribit::{DeribitClient, DeribitConfig};
//! use zen_websocket::testing::DeribitServer;
//! use zen_websocket::Error;
//!
//! let server = DeribitServer::start()?;
//! server.fail_method("public/get_time", 10028, "too_many_requests");
//! let client = DeribitClient::connect(DeribitConfig::builder().url(server.url()).build()?)?;
//! match client.request("public/get_time", json!({})) {
//!     Err(Error::RateLimited { retry_after }) => assert_eq!(retry_after, Duration::from_secs(1)),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), zen_websocket::Error>(())
//! ```
//!
//! Secrets (the client secret, access and refresh tokens) never appear in
//! `Debug` output or logs. Logs use the target `zen_websocket`: a failed token
//! refresh is a `warn`; with the client's `debug(true)`, authentication and
//! refreshes are logged at `debug`.

mod books;
mod client;
pub mod codes;
mod config;
mod protocol;
mod refresh;

pub use client::{DeribitClient, Notification};
pub use config::{
    Credentials, DeribitConfig, DeribitConfigBuilder, MAINNET_URL, MIN_HEARTBEAT_INTERVAL,
    TESTNET_URL,
};
pub use protocol::{is_private_channel, map_rpc_error, DeribitProtocol, Tokens};
