//! The Deribit integration (JSON-RPC 2.0 over WebSocket).
//!
//! [`codes`] holds the pure parts: error-code mapping and message classification.

pub mod codes;
