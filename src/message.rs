//! Messages as the user sees them: text and binary payloads, and close frames.

use std::fmt;

/// A WebSocket data message, sent or received.
///
/// Control frames (ping, pong) are handled by the library; close frames reach
/// the user as [`crate::Event::Closed`] with a [`CloseFrame`].
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// A UTF-8 text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

impl Message {
    /// The payload as bytes (text as its UTF-8 encoding).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t),
            Message::Binary(_) => None,
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True when the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }

    /// Parse a text message as JSON (`None` for binary or invalid JSON).
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.as_text()?).ok()
    }
}

impl fmt::Debug for Message {
    // Payloads can be large and may hold credentials: show a bounded prefix only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Text(t) => {
                let cut: String = t.chars().take(64).collect();
                if cut.len() < t.len() {
                    write!(f, "Text({cut:?}… {} bytes)", t.len())
                } else {
                    write!(f, "Text({cut:?})")
                }
            }
            Message::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s)
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.to_owned())
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(b)
    }
}

impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Self {
        Message::Binary(b.to_vec())
    }
}

/// A close frame: a status code and a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The close code: 1000 normal, 1001 going away, 1011 server error, …
    pub code: u16,
    /// The reason (may be empty).
    pub reason: String,
}

impl CloseFrame {
    /// A close frame with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }

    /// A normal closure (1000) with no reason.
    pub fn normal() -> Self {
        CloseFrame::new(1000, "")
    }
}

/// Well-known close codes (RFC 6455 section 7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutdown, browser navigating away).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data.
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid payload data (e.g. bad UTF-8).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation.
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Internal server error.
    pub const SERVER_ERROR: u16 = 1011;
    /// Service restart.
    pub const RESTART: u16 = 1012;
    /// Try again later.
    pub const AGAIN: u16 = 1013;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_a_whole_long_payload() {
        let m = Message::Text("x".repeat(1000));
        let shown = format!("{m:?}");
        assert!(shown.len() < 120, "{shown}");
        assert!(shown.contains("1000 bytes"));
    }

    #[test]
    fn conversions_pick_the_right_kind() {
        assert!(Message::from("a").is_text());
        assert!(!Message::from(vec![1u8]).is_text());
        assert_eq!(Message::from("{\"a\":1}").json().unwrap()["a"], 1);
    }
}
