//! The embedded testing server (cargo feature `testing`).
//!
//! [`MockServer`] is a real WebSocket server on `127.0.0.1`, built on
//! tungstenite, for the tests of code that uses this crate (and for the
//! crate's own tests and benchmarks). It echoes by default, answers with a
//! handler you give it, injects messages, simulates every kind of disconnect
//! (close codes, abrupt TCP loss, a silent half-open peer), refuses upgrades
//! with an HTTP status, slows its replies down, restarts on the same port, and
//! waits for what a client sent with [`MockServer::assert_message_sent`] and a
//! [`Matcher`]. With [`MockServer::start_tls`] it serves `wss://` with a
//! certificate from a CA made at run time ([`TestCertificates`]).
//!
//! Every server stops and joins its threads when dropped; it never needs
//! network access beyond loopback.
//!
//! ```
//! use std::time::Duration;
//! use serde_json::json;
//! use zen_websocket::testing::{MockServer, Reply};
//!
//! let server = MockServer::builder()
//!     .handler(|m| match m.json() {
//!         Some(v) if v["op"] == "subscribe" => Reply::Text(r#"{"ok":true}"#.into()),
//!         _ => Reply::None,
//!     })
//!     .start()?;
//! let (mut ws, _) = tungstenite::connect(server.url())?;
//! ws.send(tungstenite::Message::text(r#"{"op":"subscribe","channel":"trades"}"#))?;
//! assert_eq!(ws.read()?.to_text()?, r#"{"ok":true}"#);
//! server.assert_message_sent(json!({"op": "subscribe"}), Duration::from_secs(2))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod accept;
mod connection;
mod deribit_server;
mod matcher;
mod pipe;
mod server;
mod tls;

pub use deribit_server::{ConnectionInfo, DeribitServer, DeribitServerBuilder, RecordedRequest};
pub use matcher::Matcher;
pub use server::{Disconnect, HandshakeInfo, MockServer, MockServerBuilder, Reply};
pub use tls::TestCertificates;
