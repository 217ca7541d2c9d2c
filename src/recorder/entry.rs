//! The JSONL entry codec: one [`Entry`] per line. Pure, no I/O.
//!
//! We write one strict shape (see `docs/recording-format.md`):
//!
//! ```text
//! {"ts":"2026-12-02T00:31:07.123456Z","dir":"in","type":"text","data":"{\"price\":1}","conn":3}
//! {"ts":"…","dir":"out","type":"binary","data":"AAEC/w=="}
//! {"ts":"…","dir":"in","type":"close","code":1000,"reason":"bye"}
//! {"ts":"…","dir":"sys","type":"connected","url":"wss://example.com/ws"}
//! {"ts":"…","dir":"sys","type":"disconnected","cause":"connection reset"}
//! {"ts":"…","dir":"sys","type":"reconnecting","attempt":2,"delay_ms":1500}
//! {"ts":"…","dir":"sys","type":"reconnected","attempt":2}
//! ```
//!
//! and read leniently: ZenWebsocket (Elixir) recordings mark binary frames with
//! `"binary":true` (on `text` or `binary` entries), may double-encode a close
//! frame as a JSON string in `data`, and may write time stamps without
//! microseconds. Unknown fields are ignored.

use std::fmt;
use std::time::SystemTime;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::{Map, Value};

use super::redact::{any_byte, Redactor};
use super::timestamp::parse_timestamp;

/// Who sent a frame, or `Internal` for the client's own lifecycle events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Received from the server (`"in"`).
    In,
    /// Sent by the client (`"out"`).
    Out,
    /// A lifecycle event of the client itself (`"sys"`).
    Internal,
}

impl Direction {
    /// The name in the file: `"in"`, `"out"` or `"sys"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Internal => "sys",
        }
    }

    /// Reads `in`, `out`, `sys` (and `internal`), in any ASCII case.
    fn parse(s: &str) -> Option<Direction> {
        [
            ("in", Direction::In),
            ("out", Direction::Out),
            ("sys", Direction::Internal),
            ("internal", Direction::Internal),
        ]
        .into_iter()
        .find(|(name, _)| s.eq_ignore_ascii_case(name))
        .map(|(_, d)| d)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an [`Entry`] records: a frame, or a lifecycle event of the client.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryKind {
    /// A text frame.
    Text(String),
    /// A binary frame (base64 in the file).
    Binary(Vec<u8>),
    /// A close frame; `code` is `None` for a close frame without a status.
    Close {
        /// The close code, if the frame carried one.
        code: Option<u16>,
        /// The reason (may be empty).
        reason: String,
    },
    /// The client connected (or reconnected) to `url`.
    Connected {
        /// The URL dialed (credentials in it are redacted in the file).
        url: String,
    },
    /// The connection dropped.
    Disconnected {
        /// Why, in words.
        cause: String,
    },
    /// The client waits `delay_ms` before reconnection attempt `attempt`.
    Reconnecting {
        /// The attempt about to be made (1-based).
        attempt: u32,
        /// The back-off delay before it, in milliseconds.
        delay_ms: u64,
    },
    /// Reconnection attempt `attempt` succeeded.
    Reconnected {
        /// The attempt that succeeded (1-based).
        attempt: u32,
    },
}

impl EntryKind {
    /// The `type` in the file: `text`, `binary`, `close`, `connected`,
    /// `disconnected`, `reconnecting` or `reconnected`.
    pub fn type_name(&self) -> &'static str {
        match self {
            EntryKind::Text(_) => "text",
            EntryKind::Binary(_) => "binary",
            EntryKind::Close { .. } => "close",
            EntryKind::Connected { .. } => "connected",
            EntryKind::Disconnected { .. } => "disconnected",
            EntryKind::Reconnecting { .. } => "reconnecting",
            EntryKind::Reconnected { .. } => "reconnected",
        }
    }

    /// True for the client's lifecycle events (not frames).
    pub fn is_lifecycle(&self) -> bool {
        !matches!(
            self,
            EntryKind::Text(_) | EntryKind::Binary(_) | EntryKind::Close { .. }
        )
    }

    /// Payload bytes of a data frame (text or binary); 0 for anything else.
    pub fn payload_len(&self) -> usize {
        match self {
            EntryKind::Text(t) => t.len(),
            EntryKind::Binary(b) => b.len(),
            _ => 0,
        }
    }
}

impl fmt::Debug for EntryKind {
    // Payloads can be large and may hold credentials: show a bounded prefix only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryKind::Text(t) => {
                let cut: String = t.chars().take(64).collect();
                if cut.len() < t.len() {
                    write!(f, "Text({cut:?}… {} bytes)", t.len())
                } else {
                    write!(f, "Text({cut:?})")
                }
            }
            EntryKind::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
            EntryKind::Close { code, reason } => f
                .debug_struct("Close")
                .field("code", code)
                .field("reason", reason)
                .finish(),
            EntryKind::Connected { url } => f.debug_struct("Connected").field("url", url).finish(),
            EntryKind::Disconnected { cause } => f
                .debug_struct("Disconnected")
                .field("cause", cause)
                .finish(),
            EntryKind::Reconnecting { attempt, delay_ms } => f
                .debug_struct("Reconnecting")
                .field("attempt", attempt)
                .field("delay_ms", delay_ms)
                .finish(),
            EntryKind::Reconnected { attempt } => f
                .debug_struct("Reconnected")
                .field("attempt", attempt)
                .finish(),
        }
    }
}

/// One line of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When it happened (written with microsecond precision).
    pub ts: SystemTime,
    /// Inbound, outbound, or internal (lifecycle).
    pub dir: Direction,
    /// What happened.
    pub kind: EntryKind,
    /// Which connection, when several record into one file (a pool).
    pub conn: Option<u64>,
}

impl Entry {
    /// An entry of `kind` stamped now.
    pub fn now(dir: Direction, kind: EntryKind, conn: Option<u64>) -> Entry {
        Entry {
            ts: SystemTime::now(),
            dir,
            kind,
            conn,
        }
    }

    /// A text frame, stamped now.
    pub fn text(dir: Direction, text: impl Into<String>, conn: Option<u64>) -> Entry {
        Entry::now(dir, EntryKind::Text(text.into()), conn)
    }

    /// A binary frame, stamped now.
    pub fn binary(dir: Direction, data: impl Into<Vec<u8>>, conn: Option<u64>) -> Entry {
        Entry::now(dir, EntryKind::Binary(data.into()), conn)
    }

    /// A close frame, stamped now.
    pub fn close(
        dir: Direction,
        code: Option<u16>,
        reason: impl Into<String>,
        conn: Option<u64>,
    ) -> Entry {
        Entry::now(
            dir,
            EntryKind::Close {
                code,
                reason: reason.into(),
            },
            conn,
        )
    }

    /// A lifecycle event ([`Direction::Internal`]), stamped now. Meant for the
    /// lifecycle kinds; any kind is accepted and recorded as `"sys"`.
    pub fn lifecycle(kind: EntryKind, conn: Option<u64>) -> Entry {
        Entry::now(Direction::Internal, kind, conn)
    }
}

/// Why a line could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The line is not valid JSON; the parser's message.
    Json(String),
    /// The line is JSON but not an object.
    NotAnObject,
    /// A required field is absent.
    Missing(&'static str),
    /// A field has the wrong type or an impossible value.
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The `type` is not one we know.
    UnknownType(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Json(e) => write!(f, "not JSON: {e}"),
            DecodeError::NotAnObject => f.write_str("not a JSON object"),
            DecodeError::Missing(field) => write!(f, "missing field `{field}`"),
            DecodeError::Invalid { field, reason } => write!(f, "invalid `{field}`: {reason}"),
            DecodeError::UnknownType(t) => {
                let cut: String = t.chars().take(40).collect();
                write!(f, "unknown entry type {cut:?}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Encodes `entry` as one JSON line, without the newline, after redacting its
/// text payload, close reason, URL and disconnect cause with `redactor`.
/// Binary payloads are written as they are (base64).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use zen_websocket::recorder::{entry, Direction, Entry, EntryKind, Redactor};
/// let e = Entry {
///     ts: UNIX_EPOCH + Duration::from_micros(1_796_171_467_123_456),
///     dir: Direction::Out,
///     kind: EntryKind::Text(r#"{"op":"login","password":"hunter2"}"#.into()),
///     conn: Some(3),
/// };
/// assert_eq!(
///     entry::encode(&e, &Redactor::default()),
///     r#"{"ts":"2026-12-02T00:31:07.123456Z","dir":"out","type":"text","data":"{\"op\":\"login\",\"password\":\"[REDACTED]\"}","conn":3}"#
/// );
/// ```
pub fn encode(entry: &Entry, redactor: &Redactor) -> String {
    let mut out = String::with_capacity(96 + entry.kind.payload_len() * 4 / 3);
    encode_into(entry, redactor, &mut out, &mut TsCache::default());
    out
}

/// The last time stamp formatted: the entries of one read burst share their
/// stamp, so the writer formats it once per burst instead of once per entry.
#[derive(Debug, Default)]
pub(crate) struct TsCache {
    last: Option<(SystemTime, String)>,
}

/// [`encode`], appending to `out` (the writer reuses one buffer per batch).
pub(crate) fn encode_into(entry: &Entry, redactor: &Redactor, out: &mut String, ts: &mut TsCache) {
    out.push_str("{\"ts\":\"");
    push_cached_timestamp(out, entry.ts, ts);
    out.push_str("\",\"dir\":\"");
    out.push_str(entry.dir.as_str());
    out.push_str("\",\"type\":\"");
    out.push_str(entry.kind.type_name());
    out.push('"');
    match &entry.kind {
        EntryKind::Text(t) => {
            out.push_str(",\"data\":");
            push_text_value(out, redactor, t);
        }
        EntryKind::Binary(b) => {
            out.push_str(",\"data\":\"");
            STANDARD.encode_string(b, out);
            out.push('"');
        }
        EntryKind::Close { code, reason } => {
            if let Some(code) = code {
                out.push_str(",\"code\":");
                push_u64(out, u64::from(*code));
            }
            out.push_str(",\"reason\":");
            push_json_string(out, &redactor.redact_text(reason));
        }
        EntryKind::Connected { url } => {
            out.push_str(",\"url\":");
            push_json_string(out, &redactor.redact_url(url));
        }
        EntryKind::Disconnected { cause } => {
            out.push_str(",\"cause\":");
            push_json_string(out, &redactor.redact_text(cause));
        }
        EntryKind::Reconnecting { attempt, delay_ms } => {
            out.push_str(",\"attempt\":");
            push_u64(out, u64::from(*attempt));
            out.push_str(",\"delay_ms\":");
            push_u64(out, *delay_ms);
        }
        EntryKind::Reconnected { attempt } => {
            out.push_str(",\"attempt\":");
            push_u64(out, u64::from(*attempt));
        }
    }
    if let Some(conn) = entry.conn {
        out.push_str(",\"conn\":");
        push_u64(out, conn);
    }
    out.push('}');
}

/// The frames of one read burst in two flat buffers, for the writer thread.
///
/// A connection reads up to a few hundred frames per wake-up, and they share
/// a direction, a connection and (stamped together) a time stamp. Handing
/// them over as one `Entry` each would cost an allocation per frame on the
/// connection thread and a cross-thread free per frame on the writer, which is
/// most of what recording costs a flood; a burst costs a few allocations in
/// all, and the writer encodes straight from its buffers.
#[derive(Debug, Clone)]
pub(crate) struct Burst {
    pub(crate) ts: SystemTime,
    pub(crate) dir: Direction,
    pub(crate) conn: Option<u64>,
    /// The text payloads, back to back (so slicing needs no UTF-8 check).
    text: String,
    /// The binary payloads, back to back.
    binary: Vec<u8>,
    /// In arrival order: whether a frame is binary, and where it ends in its buffer.
    frames: Vec<(bool, usize)>,
}

impl Default for Burst {
    fn default() -> Self {
        Burst {
            ts: SystemTime::UNIX_EPOCH,
            dir: Direction::In,
            conn: None,
            text: String::new(),
            binary: Vec::new(),
            frames: Vec::new(),
        }
    }
}

impl Burst {
    /// An empty burst with room for `frames` frames of `text` and `binary` bytes in all.
    pub(crate) fn new(
        ts: SystemTime,
        dir: Direction,
        conn: Option<u64>,
        room: (usize, usize, usize),
    ) -> Burst {
        let mut burst = Burst::default();
        burst.reuse(ts, dir, conn, room);
        burst
    }

    /// Empties a burst (a written one, for reuse), keeping its buffers, and
    /// makes room as [`Burst::new`] does.
    pub(crate) fn reuse(
        &mut self,
        ts: SystemTime,
        dir: Direction,
        conn: Option<u64>,
        (frames, text, binary): (usize, usize, usize),
    ) {
        self.ts = ts;
        self.dir = dir;
        self.conn = conn;
        self.text.clear();
        self.binary.clear();
        self.frames.clear();
        self.text.reserve(text);
        self.binary.reserve(binary);
        self.frames.reserve(frames);
    }

    /// Small enough to keep for reuse: one huge frame should not pin its
    /// buffer for the life of the recorder.
    pub(crate) fn reusable(&self) -> bool {
        self.text.capacity() + self.binary.capacity() <= 256 << 10
    }

    pub(crate) fn push_text(&mut self, t: &str) {
        self.text.push_str(t);
        self.frames.push((false, self.text.len()));
    }

    pub(crate) fn push_binary(&mut self, b: &[u8]) {
        self.binary.extend_from_slice(b);
        self.frames.push((true, self.binary.len()));
    }

    /// How many frames it holds.
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frames as entries, in order (tests compare with them).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> Vec<Entry> {
        let (mut t, mut b) = (0, 0);
        self.frames
            .iter()
            .map(|&(binary, end)| {
                let kind = if binary {
                    let k = EntryKind::Binary(self.binary[b..end].to_vec());
                    b = end;
                    k
                } else {
                    let k = EntryKind::Text(self.text[t..end].to_owned());
                    t = end;
                    k
                };
                Entry {
                    ts: self.ts,
                    dir: self.dir,
                    kind,
                    conn: self.conn,
                }
            })
            .collect()
    }
}

/// Appends every frame of `burst` as one line each, exactly as
/// [`encode_into`] would encode them as entries, but with the parts they share
/// (stamp, direction, connection) formatted once.
pub(crate) fn encode_burst_into(
    burst: &Burst,
    redactor: &Redactor,
    out: &mut String,
    ts: &mut TsCache,
) {
    let mut head = String::with_capacity(64);
    head.push_str("{\"ts\":\"");
    push_cached_timestamp(&mut head, burst.ts, ts);
    head.push_str("\",\"dir\":\"");
    head.push_str(burst.dir.as_str());
    head.push_str("\",\"type\":\"");
    let mut tail = String::with_capacity(24);
    if let Some(conn) = burst.conn {
        tail.push_str(",\"conn\":");
        push_u64(&mut tail, conn);
    }
    tail.push_str("}\n");
    let (mut t, mut b) = (0, 0);
    for &(binary, end) in &burst.frames {
        out.push_str(&head);
        if binary {
            out.push_str("binary\",\"data\":\"");
            if let Some(bytes) = burst.binary.get(b..end) {
                STANDARD.encode_string(bytes, out);
            }
            out.push('"');
            b = end;
        } else {
            out.push_str("text\",\"data\":");
            // The ends were recorded after whole strings, so they are char
            // boundaries and `get` always succeeds.
            push_text_value(out, redactor, burst.text.get(t..end).unwrap_or(""));
            t = end;
        }
        out.push_str(&tail);
    }
}

/// Appends `t` formatted, from the cache when it is the last stamp formatted.
fn push_cached_timestamp(out: &mut String, t: SystemTime, cache: &mut TsCache) {
    match &cache.last {
        Some((last, text)) if *last == t => out.push_str(text),
        _ => {
            let mut text = String::with_capacity(27);
            super::timestamp::push_timestamp(&mut text, t);
            out.push_str(&text);
            cache.last = Some((t, text));
        }
    }
}

/// Bytes a JSON string must escape: `"`, `\\` and the controls below 0x20.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The index of the first byte at or after `from` that [`NEEDS_ESCAPE`].
///
/// Eight bytes at a time ("SWAR"): the writer runs this over every recorded
/// payload, and most payloads have long runs that need nothing. For each word
/// the classic "has a zero byte" test is applied to `w ^ '"'`, `w ^ '\\'` and
/// (as "has a byte below 0x20") to `w`; its lowest set bit is always exact,
/// which is the only one used.
fn next_escape(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let rest = bytes.get(from..)?;
    let mut chunks = rest.chunks_exact(8);
    let mut at = from;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let hits = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w);
        let hits = hits & HIGH;
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|b| NEEDS_ESCAPE[usize::from(*b)])
        .map(|i| at + i)
}

/// Appends the text payload `t`, redacted, as a JSON string literal.
///
/// Redaction needs a `:` or `=` after a key (or a `\\` escape to disguise
/// one), and escaping needs a quote, a backslash or a control. One pass that
/// looks for all of them at once lets a frame with none (plain text, numbers,
/// tokens) be copied as it is; anything else takes the full path.
fn push_text_value(out: &mut String, redactor: &Redactor, t: &str) {
    // Separate comparisons, not `matches!`: they fold into vector compares,
    // where a match compiles to a bit test per byte (three times slower).
    let special = |b: u8| {
        u8::from(b < 0x20)
            | u8::from(b == b'"')
            | u8::from(b == b'\\')
            | u8::from(b == b':')
            | u8::from(b == b'=')
    };
    if !any_byte(t.as_bytes(), special) {
        out.push('"');
        out.push_str(t);
        out.push('"');
    } else {
        push_json_string(out, &redactor.redact_text(t));
    }
}

/// Appends `s` as a JSON string literal. Written by hand because it cannot
/// fail, unlike `serde_json::to_string`, and needs no intermediate allocation.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(i) = next_escape(bytes, start) {
        let b = bytes[i];
        // `i` is at an ASCII byte, so both slices end on char boundaries.
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends `n` in decimal without allocating (`to_string` would, per entry).
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &buf[i..] {
        out.push(char::from(d));
    }
}

/// Base64 as other tools write it: padding optional, either alphabet.
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);
const LENIENT_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes one line. Never panics: anything unexpected is a [`DecodeError`].
///
/// Surrounding white space (and a trailing `\r`) is ignored, as is a UTF-8
/// byte order mark, unknown fields, and the ZenWebsocket variants described
/// in the module docs.
///
/// ```
/// use zen_websocket::recorder::{entry, Direction, EntryKind};
/// let e = entry::decode(r#"{"ts":"2026-12-02T00:31:07Z","dir":"in","type":"binary","data":"AAE=","binary":true}"#)?;
/// assert_eq!(e.dir, Direction::In);
/// assert_eq!(e.kind, EntryKind::Binary(vec![0, 1]));
/// # Ok::<(), entry::DecodeError>(())
/// ```
pub fn decode(line: &str) -> Result<Entry, DecodeError> {
    let line = line.trim().trim_start_matches('\u{feff}');
    let value: Value = serde_json::from_str(line).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(DecodeError::NotAnObject);
    };
    let ts = match obj.get("ts") {
        Some(Value::String(s)) => parse_timestamp(s)?,
        Some(_) => return Err(invalid("ts", "must be an RFC 3339 string")),
        None => return Err(DecodeError::Missing("ts")),
    };
    let type_name = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(invalid("type", "must be a string")),
        None => return Err(DecodeError::Missing("type")),
    };
    let kind = decode_kind(type_name, &obj)?;
    let dir = match obj.get("dir") {
        Some(Value::String(s)) => Direction::parse(s)
            .ok_or_else(|| invalid("dir", "must be \"in\", \"out\" or \"sys\""))?,
        None | Some(Value::Null) if kind.is_lifecycle() => Direction::Internal,
        Some(_) => return Err(invalid("dir", "must be a string")),
        None => return Err(DecodeError::Missing("dir")),
    };
    let conn = uint(&obj, "conn")?;
    Ok(Entry {
        ts,
        dir,
        kind,
        conn,
    })
}

fn decode_kind(type_name: &str, obj: &Map<String, Value>) -> Result<EntryKind, DecodeError> {
    let is = |name: &str| type_name.eq_ignore_ascii_case(name);
    if is("text") {
        let data = required_str(obj, "data")?;
        // ZenWebsocket marks binary frames with `"binary": true`.
        if obj.get("binary") == Some(&Value::Bool(true)) {
            return Ok(EntryKind::Binary(base64_decode(data)?));
        }
        Ok(EntryKind::Text(data.to_owned()))
    } else if is("binary") {
        match obj.get("data") {
            Some(Value::String(s)) => Ok(EntryKind::Binary(base64_decode(s)?)),
            // Some tools write a byte array; accept it when every item is a byte.
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect::<Option<Vec<u8>>>()
                .map(EntryKind::Binary)
                .ok_or_else(|| invalid("data", "an array item is not a byte")),
            Some(_) => Err(invalid("data", "must be a base64 string")),
            None => Err(DecodeError::Missing("data")),
        }
    } else if is("close") {
        decode_close(obj)
    } else if is("connected") {
        Ok(EntryKind::Connected {
            url: required_str(obj, "url")?.to_owned(),
        })
    } else if is("disconnected") {
        Ok(EntryKind::Disconnected {
            cause: optional_str(obj, "cause")?.unwrap_or_default(),
        })
    } else if is("reconnecting") {
        Ok(EntryKind::Reconnecting {
            attempt: required_u32(obj, "attempt")?,
            delay_ms: uint(obj, "delay_ms")?.ok_or(DecodeError::Missing("delay_ms"))?,
        })
    } else if is("reconnected") {
        Ok(EntryKind::Reconnected {
            attempt: required_u32(obj, "attempt")?,
        })
    } else {
        Err(DecodeError::UnknownType(type_name.to_owned()))
    }
}

/// Ours: top-level `code` and `reason`. ZenWebsocket: `data` holding
/// `{"code":…,"reason":…}`, usually as a JSON string (double-encoded).
fn decode_close(obj: &Map<String, Value>) -> Result<EntryKind, DecodeError> {
    if obj.contains_key("code") || obj.contains_key("reason") {
        return close_from(obj);
    }
    match obj.get("data") {
        None | Some(Value::Null) => Ok(EntryKind::Close {
            code: None,
            reason: String::new(),
        }),
        Some(Value::Object(inner)) => close_from(inner),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(inner)) => close_from(&inner),
            // Plain text in `data` is the best guess at a reason.
            _ => Ok(EntryKind::Close {
                code: None,
                reason: s.clone(),
            }),
        },
        Some(_) => Err(invalid(
            "data",
            "a close frame's data must be an object or a string",
        )),
    }
}

fn close_from(obj: &Map<String, Value>) -> Result<EntryKind, DecodeError> {
    let code = match obj.get("code") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.trim()
                .parse::<u16>()
                .map_err(|_| invalid("code", "must be an integer from 0 to 65535"))?,
        ),
        Some(v) => Some(
            as_uint(v)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| invalid("code", "must be an integer from 0 to 65535"))?,
        ),
    };
    Ok(EntryKind::Close {
        code,
        reason: optional_str(obj, "reason")?.unwrap_or_default(),
    })
}

fn invalid(field: &'static str, reason: &str) -> DecodeError {
    DecodeError::Invalid {
        field,
        reason: reason.to_owned(),
    }
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, DecodeError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(field, "must be a string")),
        None => Err(DecodeError::Missing(field)),
    }
}

fn optional_str(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        None | Some(Value::Null) => Ok(None),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

/// A non-negative integer; integral floats (`3.0`) are accepted too.
fn as_uint(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    })
}

fn uint(obj: &Map<String, Value>, field: &'static str) -> Result<Option<u64>, DecodeError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_uint(v)
            .map(Some)
            .ok_or_else(|| invalid(field, "must be a non-negative integer")),
    }
}

fn required_u32(obj: &Map<String, Value>, field: &'static str) -> Result<u32, DecodeError> {
    let n = uint(obj, field)?.ok_or(DecodeError::Missing(field))?;
    u32::try_from(n).map_err(|_| invalid(field, "is larger than 4294967295"))
}

fn base64_decode(s: &str) -> Result<Vec<u8>, DecodeError> {
    // Line-wrapped (MIME style) base64 is still base64.
    let compact: std::borrow::Cow<'_, str> = if s.bytes().any(|b| b.is_ascii_whitespace()) {
        s.chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect::<String>()
            .into()
    } else {
        s.into()
    };
    LENIENT_STANDARD
        .decode(compact.as_bytes())
        .or_else(|_| LENIENT_URL_SAFE.decode(compact.as_bytes()))
        .map_err(|e| DecodeError::Invalid {
            field: "data",
            reason: format!("not base64: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn ts(micros: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(micros)
    }

    fn every_kind() -> Vec<Entry> {
        let t = ts(1_796_171_467_123_456);
        let kinds = [
            (
                Direction::In,
                EntryKind::Text("{\"a\":1}\n\t\"quoted\" \\ \u{1} é ✓".into()),
            ),
            (Direction::Out, EntryKind::Binary(vec![0, 1, 2, 255, 128])),
            (Direction::Out, EntryKind::Binary(Vec::new())),
            (
                Direction::In,
                EntryKind::Close {
                    code: Some(1000),
                    reason: "bye".into(),
                },
            ),
            (
                Direction::Out,
                EntryKind::Close {
                    code: None,
                    reason: String::new(),
                },
            ),
            (
                Direction::Internal,
                EntryKind::Connected {
                    url: "wss://example.com/ws".into(),
                },
            ),
            (
                Direction::Internal,
                EntryKind::Disconnected {
                    cause: "connection reset by peer".into(),
                },
            ),
            (
                Direction::Internal,
                EntryKind::Reconnecting {
                    attempt: 2,
                    delay_ms: 1500,
                },
            ),
            (Direction::Internal, EntryKind::Reconnected { attempt: 2 }),
        ];
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, (dir, kind))| Entry {
                ts: t,
                dir,
                kind,
                conn: (i % 2 == 0).then_some(i as u64),
            })
            .collect()
    }

    #[test]
    fn every_kind_round_trips() {
        for e in every_kind() {
            let line = encode(&e, &Redactor::default());
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(decode(&line).unwrap(), e, "{line}");
        }
    }

    #[test]
    fn every_kind_has_the_documented_shape() {
        let lines: Vec<String> = every_kind()
            .iter()
            .map(|e| encode(e, &Redactor::default()))
            .collect();
        let p = r#"{"ts":"2026-12-02T00:31:07.123456Z","#;
        assert_eq!(
            lines[1],
            format!(r#"{p}"dir":"out","type":"binary","data":"AAEC/4A="}}"#)
        );
        assert_eq!(
            lines[3],
            format!(r#"{p}"dir":"in","type":"close","code":1000,"reason":"bye"}}"#)
        );
        assert_eq!(
            lines[4],
            format!(r#"{p}"dir":"out","type":"close","reason":"","conn":4}}"#)
        );
        assert_eq!(
            lines[5],
            format!(r#"{p}"dir":"sys","type":"connected","url":"wss://example.com/ws"}}"#)
        );
        assert_eq!(
            lines[7],
            format!(r#"{p}"dir":"sys","type":"reconnecting","attempt":2,"delay_ms":1500}}"#)
        );
        assert_eq!(
            lines[8],
            format!(r#"{p}"dir":"sys","type":"reconnected","attempt":2,"conn":8}}"#)
        );
        // Control characters are escaped, so every line stays one line.
        assert!(
            lines[0].contains(r#"\n\t\"quoted\" \\ \u0001 é ✓"#),
            "{}",
            lines[0]
        );
        for line in &lines {
            assert!(serde_json::from_str::<Value>(line).is_ok(), "{line}");
        }
    }

    #[test]
    fn credentials_are_redacted_in_every_text_field() {
        let r = Redactor::default();
        let entries = [
            Entry::text(Direction::Out, r#"{"params":{"access_token":"AAA"}}"#, None),
            Entry::close(Direction::In, Some(4000), "bad token=AAA", None),
            Entry::lifecycle(
                EntryKind::Connected {
                    url: "wss://u:AAA@h/ws?api_key=AAA".into(),
                },
                None,
            ),
            Entry::lifecycle(
                EntryKind::Disconnected {
                    cause: "auth failed: password=AAA".into(),
                },
                None,
            ),
        ];
        for e in entries {
            let line = encode(&e, &r);
            assert!(!line.contains("AAA"), "{line}");
            assert!(line.contains("[REDACTED]"), "{line}");
        }
    }

    #[test]
    fn zen_websocket_lines_are_read() {
        let text =
            decode(r#"{"ts":"2024-05-01T10:00:00Z","dir":"in","type":"text","data":"hello"}"#)
                .unwrap();
        assert_eq!(text.kind, EntryKind::Text("hello".into()));
        assert_eq!(
            text.ts,
            parse_timestamp("2024-05-01T10:00:00.000000Z").unwrap()
        );

        let bin = decode(r#"{"ts":"2024-05-01T10:00:00.5Z","dir":"out","type":"binary","data":"AQID","binary":true}"#).unwrap();
        assert_eq!(bin.kind, EntryKind::Binary(vec![1, 2, 3]));
        assert_eq!(bin.dir, Direction::Out);

        let flagged = decode(r#"{"ts":"2024-05-01T10:00:00.123Z","dir":"in","type":"text","data":"AQID","binary":true}"#).unwrap();
        assert_eq!(flagged.kind, EntryKind::Binary(vec![1, 2, 3]));

        let close = decode(
            r#"{"ts":"2024-05-01T10:00:01.000001Z","dir":"in","type":"close","data":"{\"code\":1001,\"reason\":\"going away\"}"}"#,
        )
        .unwrap();
        assert_eq!(
            close.kind,
            EntryKind::Close {
                code: Some(1001),
                reason: "going away".into()
            }
        );
        let close_obj = decode(
            r#"{"ts":"2024-05-01T10:00:01Z","dir":"out","type":"close","data":{"code":1000,"reason":""}}"#,
        )
        .unwrap();
        assert_eq!(
            close_obj.kind,
            EntryKind::Close {
                code: Some(1000),
                reason: String::new()
            }
        );
    }

    #[test]
    fn reading_is_lenient_about_case_padding_spacing_and_extra_fields() {
        let e = decode(
            "\u{feff}  {\"ts\":\"2024-05-01T10:00:00Z\",\"dir\":\"IN\",\"type\":\"Binary\",\"data\":\"AQI\",\"extra\":[1]}\r\n",
        )
        .unwrap();
        assert_eq!(e.kind, EntryKind::Binary(vec![1, 2]));
        let e = decode(
            r#"{"ts":"2024-05-01T10:00:00Z","type":"reconnected","attempt":3.0,"conn":null}"#,
        )
        .unwrap();
        assert_eq!(e.dir, Direction::Internal);
        assert_eq!(e.kind, EntryKind::Reconnected { attempt: 3 });
        assert_eq!(e.conn, None);
        let e =
            decode(r#"{"ts":"2024-05-01T10:00:00Z","dir":"in","type":"binary","data":[1,2,255]}"#)
                .unwrap();
        assert_eq!(e.kind, EntryKind::Binary(vec![1, 2, 255]));
        let e = decode(r#"{"ts":"2024-05-01T10:00:00Z","dir":"in","type":"binary","data":"-_8="}"#)
            .unwrap();
        assert_eq!(e.kind, EntryKind::Binary(vec![0xfb, 0xff]));
    }

    #[test]
    fn decode_errors_say_what_is_wrong() {
        let cases: &[(&str, DecodeError)] = &[
            ("", DecodeError::Json(String::new())),
            ("[1,2]", DecodeError::NotAnObject),
            (
                r#"{"dir":"in","type":"text","data":"x"}"#,
                DecodeError::Missing("ts"),
            ),
            (
                r#"{"ts":"2024-05-01T10:00:00Z","dir":"in","data":"x"}"#,
                DecodeError::Missing("type"),
            ),
            (
                r#"{"ts":"2024-05-01T10:00:00Z","type":"text","data":"x"}"#,
                DecodeError::Missing("dir"),
            ),
            (
                r#"{"ts":"2024-05-01T10:00:00Z","dir":"in","type":"text"}"#,
                DecodeError::Missing("data"),
            ),
            (
                r#"{"ts":"2024-05-01T10:00:00Z","dir":"in","type":"ping"}"#,
                DecodeError::UnknownType("ping".into()),
            ),
            (
                r#"{"ts":"2024-05-01T10:00:00Z","dir":"up","type":"text","data":"x"}"#,
                invalid("dir", ""),
            ),
            (
                r#"{"ts":12,"dir":"in","type":"text","data":"x"}"#,
                invalid("ts", ""),
            ),
            (
                r#"{"ts":"yesterday","dir":"in","type":"text","data":"x"}"#,
                invalid("ts", ""),
            ),
            (
                r#"{"ts":"2024-05-01T10:00:00Z","dir":"in","type":"binary","data":"!!"}"#,
                invalid("data", ""),
            ),
            (
                r#"{"ts":"2024-05-01T10:00:00Z","dir":"in","type":"close","code":70000}"#,
                invalid("code", ""),
            ),
            (
                r#"{"ts":"2024-05-01T10:00:00Z","dir":"in","type":"text","data":"x","conn":-1}"#,
                invalid("conn", ""),
            ),
            (
                r#"{"ts":"2024-05-01T10:00:00Z","type":"reconnecting","attempt":1}"#,
                DecodeError::Missing("delay_ms"),
            ),
        ];
        for (line, expected) in cases {
            let got = decode(line).unwrap_err();
            let same = match (&got, expected) {
                (DecodeError::Json(_), DecodeError::Json(_)) => true,
                (DecodeError::Invalid { field: a, .. }, DecodeError::Invalid { field: b, .. }) => {
                    a == b
                }
                (a, b) => a == b,
            };
            assert!(same, "{line}: got {got:?}, expected {expected:?}");
            assert!(!got.to_string().is_empty());
        }
    }

    #[test]
    fn debug_never_prints_a_whole_long_payload() {
        let e = Entry::text(Direction::In, "x".repeat(1000), None);
        let shown = format!("{e:?}");
        assert!(shown.contains("1000 bytes"), "{shown}");
        assert!(shown.len() < 300, "{shown}");
    }

    fn arb_dir() -> impl Strategy<Value = Direction> {
        prop_oneof![
            Just(Direction::In),
            Just(Direction::Out),
            Just(Direction::Internal)
        ]
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = decode(&s);
        }

        #[test]
        fn decoding_near_valid_lines_never_panics(
            ts in "[0-9T:.Z+-]{0,30}",
            dir in "(in|out|sys|IN|x|)",
            ty in "(text|binary|close|connected|disconnected|reconnecting|reconnected|nope)",
            extra in "(,\"data\":(\"[A-Za-z0-9+/=]{0,12}\"|[0-9]{1,5}|null|\\[[0-9,]{0,10}\\]|\\{\\})|,\"code\":-?[0-9]{1,6}|,\"binary\":(true|false)|,\"attempt\":[0-9.e-]{1,12}|,\"conn\":\"x\"|,\"url\":1){0,4}",
        ) {
            let line = format!(r#"{{"ts":"{ts}","dir":"{dir}","type":"{ty}"{extra}}}"#);
            let _ = decode(&line);
        }

        #[test]
        fn text_entries_round_trip(micros in 0u64..253_402_300_799_000_000, dir in arb_dir(), text in "\\PC{0,100}", conn in proptest::option::of(any::<u64>())) {
            let e = Entry { ts: ts(micros), dir, kind: EntryKind::Text(text), conn };
            let line = encode(&e, &Redactor::none());
            prop_assert!(!line.contains('\n'));
            prop_assert_eq!(decode(&line).unwrap(), e);
        }

        #[test]
        fn a_burst_encodes_exactly_as_its_entries_would(
            micros in 0u64..253_402_300_799_000_000,
            dir in arb_dir(),
            conn in proptest::option::of(any::<u64>()),
            frames in proptest::collection::vec(
                prop_oneof![
                    "\\PC{0,40}".prop_map(Message::Text),
                    "[a-z{}\":,]{0,40}".prop_map(|t| Message::Text(format!("{{\"password\":\"{t}\"}}"))),
                    proptest::collection::vec(any::<u8>(), 0..40).prop_map(Message::Binary),
                ],
                0..20,
            ),
        ) {
            let redactor = Redactor::default();
            let mut burst = Burst::new(ts(micros), dir, conn, (0, 0, 0));
            for m in &frames {
                match m {
                    Message::Text(t) => burst.push_text(t),
                    Message::Binary(b) => burst.push_binary(b),
                }
            }
            prop_assert_eq!(burst.len(), frames.len());
            let mut expected = String::new();
            for e in burst.entries() {
                expected.push_str(&encode(&e, &redactor));
                expected.push('\n');
            }
            let mut got = String::new();
            encode_burst_into(&burst, &redactor, &mut got, &mut TsCache::default());
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn json_strings_are_escaped_as_serde_json_reads_them(text in "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}\u{80}-\u{ff}]){0,70}") {
            let mut out = String::new();
            push_json_string(&mut out, &text);
            prop_assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
            prop_assert!(!out.contains('\n'));
        }

        #[test]
        fn the_plain_text_shortcut_writes_what_the_full_path_writes(
            text in "([a-z0-9 ._-]|token|password|api_key|[:=\"\\\\\n{}]|\\PC){0,60}",
        ) {
            for redactor in [Redactor::default(), Redactor::with_keys(["my.key", "x"]), Redactor::none()] {
                let mut fast = String::new();
                push_text_value(&mut fast, &redactor, &text);
                let mut full = String::new();
                push_json_string(&mut full, &redactor.redact_text(&text));
                prop_assert_eq!(&fast, &full);
            }
        }

        #[test]
        fn a_reused_burst_holds_only_its_new_frames(
            old in proptest::collection::vec("\\PC{0,30}", 0..10),
            new in proptest::collection::vec("\\PC{0,30}", 0..10),
        ) {
            let mut burst = Burst::new(ts(1), Direction::Out, Some(1), (0, 0, 0));
            for t in &old {
                burst.push_text(t);
            }
            burst.push_binary(&[1, 2, 3]);
            burst.reuse(ts(2), Direction::In, Some(7), (new.len(), 0, 0));
            let mut fresh = Burst::new(ts(2), Direction::In, Some(7), (0, 0, 0));
            for t in &new {
                burst.push_text(t);
                fresh.push_text(t);
            }
            prop_assert_eq!(burst.entries(), fresh.entries());
            prop_assert!(burst.reusable());
        }

        #[test]
        fn integers_are_written_in_decimal(n in any::<u64>()) {
            let mut out = String::from("x");
            push_u64(&mut out, n);
            prop_assert_eq!(out, format!("x{n}"));
        }

        #[test]
        fn text_with_control_characters_round_trips(text in proptest::collection::vec(any::<char>(), 0..50)) {
            let text: String = text.into_iter().collect();
            let e = Entry { ts: ts(1), dir: Direction::In, kind: EntryKind::Text(text), conn: None };
            prop_assert_eq!(decode(&encode(&e, &Redactor::none())).unwrap(), e);
        }

        #[test]
        fn binary_entries_round_trip(micros in 0u64..253_402_300_799_000_000, dir in arb_dir(), data in proptest::collection::vec(any::<u8>(), 0..300), conn in proptest::option::of(any::<u64>())) {
            let e = Entry { ts: ts(micros), dir, kind: EntryKind::Binary(data), conn };
            prop_assert_eq!(decode(&encode(&e, &Redactor::default())).unwrap(), e);
        }
    }
}
