//! zen-websocket: a synchronous, thread-based WebSocket client (crate docs are written in lib.rs).
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

mod client;
mod config;
mod connection;
mod error;
mod message;

pub use client::{Client, ClientStats, CloseInitiator, ConnectionState, Event};
pub use config::{Config, ConfigBuilder, Endpoint, EventPolicy, TlsOptions};
pub use connection::backoff::Backoff;
pub use error::{
    ConfigError, Error, ErrorCategory, PoolError, ProtocolError, Recovery, Result, TimeoutKind,
};
pub use message::{close_code, CloseFrame, Message};
