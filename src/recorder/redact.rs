//! Redaction of credentials before anything reaches a recording. Pure, no I/O.
//!
//! A recording is meant to be shared (attached to a bug report, committed as a
//! test cassette), so secrets must never reach the file. The [`Redactor`] runs
//! in the writer thread on every text payload, close reason, URL and
//! disconnect cause before it is encoded:
//!
//! - a payload that is JSON has the value of every sensitive key replaced by
//!   `"[REDACTED]"`, at any depth and inside arrays; the rest of the text is
//!   kept byte for byte (key order, spacing, number formats);
//! - a payload that is not JSON is scanned for `key=value` and `key: value`
//!   pairs (query strings, form bodies, log-like text), and so are string
//!   values inside JSON, which catches `"url": "wss://…?token=…"`.
//!
//! Keys match without regard to ASCII case, `_` or `-`: `api_key`, `apiKey`,
//! `API-KEY` and `apikey` are the same key.

use std::borrow::Cow;

use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// The keys a [`Redactor::default`] treats as sensitive.
pub const DEFAULT_SENSITIVE_KEYS: &[&str] = &[
    "client_secret",
    "access_token",
    "refresh_token",
    "password",
    "secret",
    "signature",
    "api_key",
    "apikey",
    "api_secret",
    "private_key",
    "passphrase",
    "token",
    "auth",
    "authorization",
];

/// Header names that always carry credentials.
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Words that make any header name sensitive (`X-Auth-Token`, `X-MBX-APIKEY`, …).
const SENSITIVE_HEADER_WORDS: &[&str] = &[
    "secret",
    "token",
    "key",
    "signature",
    "password",
    "passphrase",
    "auth",
];

/// Replaces credentials in recorded payloads with `"[REDACTED]"`.
///
/// Cheap to clone. [`Redactor::default`] knows [`DEFAULT_SENSITIVE_KEYS`];
/// [`Redactor::with_keys`] adds your own; [`Redactor::none`] redacts nothing
/// (for recordings that must stay byte-exact and never leave the machine).
///
/// ```
/// use zen_websocket::recorder::Redactor;
/// let r = Redactor::with_keys(["session_id"]);
/// let out = r.redact_text(r#"{"params":{"client_secret":"hunter2","SessionId":"abc","n":1}}"#);
/// assert_eq!(out, r#"{"params":{"client_secret":"[REDACTED]","SessionId":"[REDACTED]","n":1}}"#);
/// assert_eq!(r.redact_text("GET /?token=abc&page=2"), "GET /?token=[REDACTED]&page=2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redactor {
    /// Normalized (ASCII lowercase, without `_` and `-`), deduplicated, never empty strings.
    keys: Vec<String>,
    /// True when every key is made of key bytes (alphanumerics, `_`, `-`), so a
    /// key can only appear in a text as a whole token.
    token_keys: bool,
    /// The length of the longest (normalized) key.
    longest: usize,
    /// The length of the shortest (normalized) key.
    shortest: usize,
    /// The keys' first and last letters by length: the prefilter compares a
    /// token with the keys only when its shape is that of some key.
    shapes: Shapes,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::none().add(DEFAULT_SENSITIVE_KEYS.iter().copied())
    }
}

impl Redactor {
    /// The default redactor: the keys of [`DEFAULT_SENSITIVE_KEYS`].
    pub fn new() -> Self {
        Redactor::default()
    }

    /// A redactor that changes nothing.
    pub fn none() -> Self {
        Redactor {
            keys: Vec::new(),
            token_keys: true,
            longest: 0,
            shortest: 0,
            shapes: Shapes::default(),
        }
    }

    /// The default keys plus `extra`.
    pub fn with_keys<I, S>(extra: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Redactor::default().add(extra)
    }

    fn add<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for key in keys {
            let n = normalize(key.as_ref());
            if !n.is_empty() && !self.keys.contains(&n) {
                self.keys.push(n);
            }
        }
        self.token_keys = self.keys.iter().all(|k| k.bytes().all(is_key_byte));
        self.longest = self.keys.iter().map(String::len).max().unwrap_or(0);
        self.shortest = self.keys.iter().map(String::len).min().unwrap_or(0);
        self.shapes = Shapes::default();
        for k in &self.keys {
            self.shapes.add(k.as_bytes());
        }
        self
    }

    /// True when `key` names a credential (ASCII case, `_` and `-` ignored).
    pub fn is_sensitive_key(&self, key: &str) -> bool {
        self.keys.iter().any(|k| normalized_eq(key, k))
    }

    /// `text` with every credential replaced; borrowed when nothing changed.
    ///
    /// JSON text keeps its exact formatting apart from the replaced values.
    pub fn redact_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.might_contain_key(text) {
            return Cow::Borrowed(text);
        }
        let trimmed = text.trim_start();
        // A top-level JSON string is JSON too: the walker keeps its quotes,
        // where the key=value scan could swallow the closing one.
        if (trimmed.starts_with('{') || trimmed.starts_with('[') || trimmed.starts_with('"'))
            && is_json(text)
        {
            return self.redact_json_text(text);
        }
        self.scan(text)
    }

    /// Replaces, in place, the value of every sensitive key anywhere in `value`
    /// and redacts `key=value` pairs inside string values. Returns true if
    /// anything changed.
    pub fn redact_json(&self, value: &mut Value) -> bool {
        match value {
            Value::Object(map) => {
                let mut changed = false;
                for (k, v) in map.iter_mut() {
                    if self.is_sensitive_key(k) {
                        if v.as_str() != Some(REDACTED) {
                            *v = Value::String(REDACTED.to_owned());
                            changed = true;
                        }
                    } else {
                        changed |= self.redact_json(v);
                    }
                }
                changed
            }
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, v| self.redact_json(v) | changed),
            Value::String(s) => match self.scan(s) {
                Cow::Owned(r) => {
                    *s = r;
                    true
                }
                Cow::Borrowed(_) => false,
            },
            _ => false,
        }
    }

    /// A URL with its password (or a user-info token) and sensitive query
    /// parameters redacted: `wss://u:pw@h/ws?token=t` becomes
    /// `wss://u:[REDACTED]@h/ws?token=[REDACTED]`.
    pub fn redact_url<'a>(&self, url: &'a str) -> Cow<'a, str> {
        if self.keys.is_empty() {
            // `Redactor::none()` changes nothing, user info included.
            return Cow::Borrowed(url);
        }
        let userinfo = url.find("://").and_then(|scheme_end| {
            let start = scheme_end + 3;
            let authority_len = url[start..]
                .find(['/', '?', '#'])
                .unwrap_or(url.len() - start);
            let authority = &url[start..start + authority_len];
            let at = authority.rfind('@')?;
            // `user:password@` keeps the user; a bare `token@` is all secret.
            let secret_start = authority[..at].find(':').map_or(0, |c| c + 1);
            Some((start + secret_start, start + at))
        });
        let (with_userinfo, rest_from) = match userinfo {
            Some((from, to)) if to > from => {
                let mut s = String::with_capacity(url.len());
                s.push_str(&url[..from]);
                s.push_str(REDACTED);
                (Some(s), to)
            }
            _ => (None, 0),
        };
        let rest = &url[rest_from..];
        match (with_userinfo, self.scan(rest)) {
            (None, scanned) => scanned,
            (Some(mut s), scanned) => {
                s.push_str(&scanned);
                Cow::Owned(s)
            }
        }
    }

    /// True when a header with this name carries credentials: `Authorization`,
    /// `Cookie`, `X-Api-Key`, any name containing `secret`, `token`, `key`,
    /// `signature`, `password`, `passphrase` or `auth`, and any of this
    /// redactor's keys.
    pub fn is_sensitive_header(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        SENSITIVE_HEADERS.contains(&lower.as_str())
            || SENSITIVE_HEADER_WORDS.iter().any(|w| lower.contains(w))
            || self.is_sensitive_key(name)
    }

    /// The value to log or record for header `name`: `"[REDACTED]"` for a
    /// sensitive header, else `value` unchanged.
    ///
    /// ```
    /// use zen_websocket::recorder::Redactor;
    /// let r = Redactor::default();
    /// assert_eq!(r.redact_header("Authorization", "Bearer abc"), "[REDACTED]");
    /// assert_eq!(r.redact_header("User-Agent", "zen"), "zen");
    /// ```
    pub fn redact_header<'a>(&self, name: &str, value: &'a str) -> Cow<'a, str> {
        if self.is_sensitive_header(name) {
            Cow::Borrowed(REDACTED)
        } else {
            Cow::Borrowed(value)
        }
    }

    /// A cheap pre-check so that the common frame (market data without any
    /// credential) is neither parsed nor copied. False only when no spelling of
    /// any key can occur in `text`.
    fn might_contain_key(&self, text: &str) -> bool {
        if self.keys.is_empty() {
            return false;
        }
        // Every redaction replaces the value after a key and its `:` or `=`
        // (JSON members, `key=value`, `key: value`), and a disguise needs a
        // backslash escape: text with none of the three has nothing to find.
        // One quick pass, and the common frame of a plain-text feed stops here.
        if !has_pair_or_escape(text.as_bytes()) {
            return false;
        }
        if !self.token_keys {
            let folded = normalize(text);
            return text.contains("\\u") || self.keys.iter().any(|k| folded.contains(k.as_str()));
        }
        // One pass over the bytes, no allocation: this runs on every recorded
        // text frame, and almost none of them hold a credential. Redaction only
        // ever applies to a whole key (a JSON key or the key of `key=value`), so
        // only whole tokens need comparing, and only those with the length and
        // the first and last letters of some key: a constant-time test per token,
        // and one table load per byte.
        let bytes = text.as_bytes();
        let n = bytes.len();
        let mut i = 0;
        while i < n {
            let b = bytes[i];
            if FOLD[usize::from(b)] == 0 {
                // A JSON escape can spell a key without its letters (`\u0074oken`);
                // let the full parser decide then.
                if b == b'\\' && bytes.get(i + 1) == Some(&b'u') {
                    return true;
                }
                i += 1;
                continue;
            }
            let start = i;
            let mut separators = 0;
            // Eight bytes at a time while the token lasts (payloads often carry
            // long tokens: ids, hashes, base64), then byte by byte.
            let mut ended = false;
            while let Some(w) = word_at(bytes, i) {
                let keys = key_byte_mask(w);
                let seps = separator_mask(w);
                if keys == HIGH_BITS {
                    separators += seps.count_ones() as usize;
                    i += 8;
                    continue;
                }
                // The token ends at the first byte whose mask bit is clear.
                let len = (!keys & HIGH_BITS).trailing_zeros() / 8;
                let before = (1u64 << (len * 8)) - 1;
                separators += (seps & before).count_ones() as usize;
                i += len as usize;
                ended = true;
                break;
            }
            while !ended && i < n {
                let f = FOLD[usize::from(bytes[i])];
                if f == 0 {
                    break;
                }
                separators += usize::from(f == SEPARATOR);
                i += 1;
            }
            let significant = i - start - separators;
            if significant < self.shortest || significant > self.longest {
                continue;
            }
            let token = &bytes[start..i];
            let (first, last) = match (token.first(), token.last()) {
                (Some(&a), Some(&z)) if separators == 0 => {
                    (FOLD[usize::from(a)], FOLD[usize::from(z)])
                }
                _ => {
                    let mut letters = token
                        .iter()
                        .map(|b| FOLD[usize::from(*b)])
                        .filter(|f| *f != SEPARATOR);
                    let first = letters.next().unwrap_or(0);
                    (first, letters.next_back().unwrap_or(first))
                }
            };
            if self.shapes.may_match(significant, first, last)
                && text.get(start..i).is_some_and(|t| self.is_sensitive_key(t))
            {
                return true;
            }
        }
        false
    }

    /// Redacts valid JSON text while keeping its formatting. Falls back to a
    /// parse-and-reserialize (which reorders keys) if the span walk and the
    /// parser ever disagree, so a secret is never kept for lack of a span.
    fn redact_json_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut walker = Walker {
            redactor: self,
            s: text,
            i: 0,
            out: String::new(),
            copied: 0,
        };
        if walker.value().is_some() {
            if walker.copied == 0 {
                return Cow::Borrowed(text);
            }
            let out = walker.finish();
            if is_json(&out) {
                return Cow::Owned(out);
            }
        }
        match serde_json::from_str::<Value>(text) {
            Ok(mut v) => {
                if !self.redact_json(&mut v) {
                    return Cow::Borrowed(text);
                }
                // Serializing a Value cannot fail; if it ever did, fail closed.
                Cow::Owned(serde_json::to_string(&v).unwrap_or_else(|_| REDACTED.to_owned()))
            }
            Err(_) => self.scan(text),
        }
    }

    /// Redacts `key=value` and `key: value` pairs in free text.
    ///
    /// The value is a quoted string (`"…"`, `'…'`, or `\"…\"` inside
    /// double-encoded JSON) or runs to the next delimiter (white space,
    /// `& ; , " ' < > # } ] ) \`). An `Authorization: Bearer xyz` style value
    /// keeps its scheme word and loses the credential after it.
    fn scan<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.might_contain_key(text) {
            return Cow::Borrowed(text);
        }
        let b = text.as_bytes();
        let mut out = String::new();
        let mut copied = 0;
        let mut i = 0;
        while i < b.len() {
            if !is_key_byte(b[i]) || (i > 0 && is_key_byte(b[i - 1])) {
                i += 1;
                continue;
            }
            let key_start = i;
            while i < b.len() && is_key_byte(b[i]) {
                i += 1;
            }
            // Every index here sits at an ASCII byte or the end, so these
            // slices are char boundaries; `get` keeps that an argument, not a
            // panic, and a failure redacts everything (fail closed).
            let Some(key) = text.get(key_start..i) else {
                return Cow::Owned(REDACTED.to_owned());
            };
            if !self.is_sensitive_key(key) {
                continue;
            }
            let Some((vs, ve)) = value_span(b, i) else {
                continue;
            };
            // Already redacted (a second pass): `]` would otherwise end the
            // value early and leave a stray bracket behind.
            if b.get(vs..)
                .is_some_and(|v| v.starts_with(REDACTED.as_bytes()))
            {
                i = vs + REDACTED.len();
                continue;
            }
            if ve > vs {
                let Some(before) = text.get(copied..vs) else {
                    return Cow::Owned(REDACTED.to_owned());
                };
                out.push_str(before);
                out.push_str(REDACTED);
                copied = ve;
            }
            i = ve.max(i);
        }
        if copied == 0 {
            return Cow::Borrowed(text);
        }
        match text.get(copied..) {
            Some(rest) => {
                out.push_str(rest);
                Cow::Owned(out)
            }
            None => Cow::Owned(REDACTED.to_owned()),
        }
    }
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok()
}

fn normalize(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// `normalize(raw) == norm` without allocating.
fn normalized_eq(raw: &str, norm: &str) -> bool {
    let mut raw = raw
        .bytes()
        .filter(|b| *b != b'_' && *b != b'-')
        .map(|b| b.to_ascii_lowercase());
    let mut norm = norm.bytes();
    loop {
        match (raw.next(), norm.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// What [`FOLD`] maps `_` and `-` to: inside a token, but not part of its normalized form.
const SEPARATOR: u8 = 1;

/// The prefilter's byte classes in one load: 0 for a byte that is not part of
/// a token, [`SEPARATOR`] for `_` and `-`, and the ASCII-lowercased byte for
/// letters and digits.
static FOLD: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if b.is_ascii_alphanumeric() {
            t[i] = b.to_ascii_lowercase();
        } else if b == b'_' || b == b'-' {
            t[i] = SEPARATOR;
        }
        i += 1;
    }
    t
};

const ONE_BYTES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = ONE_BYTES * 0x80;

/// The eight bytes at `i`, little-endian, if there are eight.
fn word_at(bytes: &[u8], i: usize) -> Option<u64> {
    let chunk: [u8; 8] = bytes.get(i..i.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// The high bit of each byte of `w` that lies strictly between `low` and
/// `high` (both at most 128). Exact per byte: masking to seven bits first
/// keeps every sum and difference inside its byte (Bit Twiddling Hacks,
/// "determine if a word has a byte between m and n").
fn between(w: u64, low: u8, high: u8) -> u64 {
    let x = w & (ONE_BYTES * 0x7f);
    (ONE_BYTES * (127 + u64::from(high))).wrapping_sub(x)
        & !w
        & x.wrapping_add(ONE_BYTES * (127 - u64::from(low)))
        & HIGH_BITS
}

/// True when `bytes` holds a `:`, `=` or `\\`.
fn has_pair_or_escape(bytes: &[u8]) -> bool {
    any_byte(bytes, |b| {
        u8::from(b == b':') | u8::from(b == b'=') | u8::from(b == b'\\')
    })
}

/// True when `hit` is non-zero for some byte. `hit` must be branch-free
/// (`u8::from(b == x) | …`, not `matches!`): it is folded over 16-byte chunks,
/// which the compiler turns into vector compares.
pub(crate) fn any_byte(bytes: &[u8], hit: impl Fn(u8) -> u8) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(0, |acc, &b| acc | hit(b)) != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| hit(b) != 0)
}

/// The high bit of each byte of `w` that [`FOLD`] does not map to 0: ASCII
/// letters (folded to lower case with `| 0x20`), digits, `_` and `-`.
fn key_byte_mask(w: u64) -> u64 {
    between(w | (ONE_BYTES * 0x20), b'a' - 1, b'z' + 1)
        | between(w, b'0' - 1, b'9' + 1)
        | separator_mask(w)
}

/// The high bit of each `_` and `-` byte of `w`.
fn separator_mask(w: u64) -> u64 {
    between(w, b'_' - 1, b'_' + 1) | between(w, b'-' - 1, b'-' + 1)
}

/// Key lengths [`Shapes`] tells apart; longer keys share the last slot.
const SHAPE_LENGTHS: usize = 33;

/// The first and last letters of the keys, by length, as 256-bit sets.
#[derive(Clone, PartialEq, Eq)]
struct Shapes {
    first: [[u64; 4]; SHAPE_LENGTHS],
    last: [[u64; 4]; SHAPE_LENGTHS],
}

impl Default for Shapes {
    fn default() -> Self {
        Shapes {
            first: [[0; 4]; SHAPE_LENGTHS],
            last: [[0; 4]; SHAPE_LENGTHS],
        }
    }
}

impl Shapes {
    fn add(&mut self, key: &[u8]) {
        let (Some(&first), Some(&last)) = (key.first(), key.last()) else {
            return;
        };
        let len = key.len().min(SHAPE_LENGTHS - 1);
        set_bit(&mut self.first[len], first);
        set_bit(&mut self.last[len], last);
    }

    /// False only when no key has this length, first letter and last letter.
    fn may_match(&self, len: usize, first: u8, last: u8) -> bool {
        let len = len.min(SHAPE_LENGTHS - 1);
        has_bit(&self.first[len], first) && has_bit(&self.last[len], last)
    }
}

impl std::fmt::Debug for Shapes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shapes { .. }")
    }
}

fn set_bit(set: &mut [u64; 4], b: u8) {
    set[usize::from(b >> 6)] |= 1 << (b & 63);
}

fn has_bit(set: &[u64; 4], b: u8) -> bool {
    set[usize::from(b >> 6)] & (1 << (b & 63)) != 0
}

/// An ASCII letter or digit, `_` or `-`: a byte that can be part of a key.
fn is_key_byte(b: u8) -> bool {
    FOLD[usize::from(b)] != 0
}

fn is_value_delimiter(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'&' | b';' | b',' | b'"' | b'\'' | b'<' | b'>' | b'#' | b'}' | b']' | b')' | b'\\'
        )
}

/// After a key ending at `i`: the byte span of its value, if a separator follows.
/// Every index returned sits at an ASCII byte or the end, so it is a char boundary.
fn value_span(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
    // The closing quote of a quoted key, possibly escaped: `"token":`, `\"token\":`.
    if b.get(i) == Some(&b'\\') && matches!(b.get(i + 1), Some(b'"')) {
        i += 2;
    } else if matches!(b.get(i), Some(b'"' | b'\'')) {
        i += 1;
    }
    while b.get(i).is_some_and(|c| *c == b' ' || *c == b'\t') {
        i += 1;
    }
    if !matches!(b.get(i), Some(b'=' | b':')) {
        return None;
    }
    i += 1;
    while b.get(i).is_some_and(|c| *c == b' ' || *c == b'\t') {
        i += 1;
    }
    match b.get(i) {
        Some(b'\\') if b.get(i + 1) == Some(&b'"') => {
            // `\"value\"` inside a double-encoded JSON string.
            let vs = i + 2;
            let mut j = vs;
            while j < b.len() && !(b[j] == b'\\' && b.get(j + 1) == Some(&b'"')) {
                j += 1;
            }
            Some((vs, j))
        }
        Some(&q @ (b'"' | b'\'')) => {
            let vs = i + 1;
            let mut j = vs;
            while j < b.len() && b[j] != q {
                // Skip the escaped character, but never past the end.
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            Some((vs, j.min(b.len())))
        }
        Some(_) => {
            let vs = i;
            let j = unquoted_end(b, vs);
            // `Bearer xyz`, `Basic xyz`: the credential is the word after the scheme.
            let word = &b[vs..j];
            let is_scheme = [&b"bearer"[..], b"basic", b"digest", b"token"]
                .iter()
                .any(|s| word.eq_ignore_ascii_case(s));
            if is_scheme && b.get(j) == Some(&b' ') {
                let cred = j + 1;
                let end = unquoted_end(b, cred);
                if end > cred {
                    return Some((cred, end));
                }
            }
            Some((vs, j))
        }
        None => None,
    }
}

fn unquoted_end(b: &[u8], mut j: usize) -> usize {
    while j < b.len() && !is_value_delimiter(b[j]) {
        j += 1;
    }
    j
}

/// Walks valid JSON text and copies it to `out`, replacing the spans of
/// sensitive values. Every method returns `None` on input it does not expect
/// (the caller then falls back to the parser).
struct Walker<'r, 'a> {
    redactor: &'r Redactor,
    s: &'a str,
    i: usize,
    out: String,
    /// `s[..copied]` has been copied (or replaced) into `out`.
    copied: usize,
}

impl Walker<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn replace(&mut self, from: usize, to: usize, with: &str) -> Option<()> {
        self.out.push_str(self.s.get(self.copied..from)?);
        self.out.push_str(with);
        self.copied = to;
        Some(())
    }

    fn finish(mut self) -> String {
        if let Some(rest) = self.s.get(self.copied..) {
            self.out.push_str(rest);
        }
        self.out
    }

    /// Past one string literal; returns its span including the quotes.
    fn string(&mut self) -> Option<(usize, usize)> {
        let start = self.i;
        if self.peek()? != b'"' {
            return None;
        }
        self.i += 1;
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Some((start, self.i));
                }
                _ => self.i += 1,
            }
        }
    }

    fn value(&mut self) -> Option<()> {
        self.skip_ws();
        match self.peek()? {
            b'{' => {
                self.i += 1;
                self.skip_ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip_ws();
                    let (ks, ke) = self.string()?;
                    let sensitive = self.key_is_sensitive(ks, ke)?;
                    self.skip_ws();
                    if self.peek()? != b':' {
                        return None;
                    }
                    self.i += 1;
                    self.skip_ws();
                    if sensitive {
                        let vs = self.i;
                        self.skip_value()?;
                        let quoted = format!("\"{REDACTED}\"");
                        self.replace(vs, self.i, &quoted)?;
                    } else {
                        self.value()?;
                    }
                    self.skip_ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.skip_ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.value()?;
                    self.skip_ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'"' => {
                let (start, end) = self.string()?;
                // The raw (escaped) contents: a replacement there stays valid
                // JSON because `[REDACTED]` needs no escaping and the scanner
                // stops values at backslashes and quotes.
                let inner = self.s.get(start + 1..end - 1)?;
                if let Cow::Owned(r) = self.redactor.scan(inner) {
                    self.replace(start + 1, end - 1, &r)?;
                }
                Some(())
            }
            _ => {
                self.skip_scalar();
                Some(())
            }
        }
    }

    fn skip_scalar(&mut self) {
        while self
            .peek()
            .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
        {
            self.i += 1;
        }
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                        }
                        b'{' | b'[' => {
                            depth += 1;
                            self.i += 1;
                        }
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            self.i += 1;
                            if depth == 0 {
                                return Some(());
                            }
                        }
                        _ => self.i += 1,
                    }
                }
            }
            _ => {
                self.skip_scalar();
                Some(())
            }
        }
    }

    fn key_is_sensitive(&self, start: usize, end: usize) -> Option<bool> {
        let raw = self.s.get(start..end)?;
        let inner = self.s.get(start + 1..end - 1)?;
        if inner.contains('\\') {
            // Escapes can spell a key in disguise: decode it first.
            let key: String = serde_json::from_str(raw).ok()?;
            Some(self.redactor.is_sensitive_key(&key))
        } else {
            Some(self.redactor.is_sensitive_key(inner))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r() -> Redactor {
        Redactor::default()
    }

    #[test]
    fn top_level_secrets_in_json_are_replaced_and_the_rest_is_kept_byte_for_byte() {
        let text = r#"{ "jsonrpc": "2.0", "id": 7, "method": "public/auth",
            "params": { "grant_type": "client_credentials", "client_id": "abc", "client_secret": "s3cr3t" } }"#;
        let out = r().redact_text(text);
        assert!(!out.contains("s3cr3t"), "{out}");
        assert_eq!(out, text.replace("\"s3cr3t\"", "\"[REDACTED]\""));
    }

    #[test]
    fn nested_objects_and_arrays_are_redacted_at_any_depth() {
        let text = r#"{"result":{"access_token":"AT","refresh_token":"RT","expires_in":900},
            "list":[{"a":[{"password":"P1"}]},{"token":{"deep":"X"}},{"signature":["S1","S2"]}],
            "ok":"fine"}"#;
        let out = r().redact_text(text);
        for secret in ["AT", "RT", "P1", "\"X\"", "S1", "S2"] {
            assert!(!out.contains(secret), "{secret} survived in {out}");
        }
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["result"]["access_token"], REDACTED);
        assert_eq!(v["result"]["expires_in"], 900);
        assert_eq!(v["list"][1]["token"], REDACTED);
        assert_eq!(v["list"][2]["signature"], REDACTED);
        assert_eq!(v["ok"], "fine");
    }

    #[test]
    fn keys_match_regardless_of_case_underscores_and_dashes() {
        let r = r();
        for k in [
            "API_KEY",
            "apiKey",
            "Api-Key",
            "apikey",
            "CLIENT_SECRET",
            "Authorization",
            "AUTH",
        ] {
            assert!(r.is_sensitive_key(k), "{k}");
        }
        for k in ["author", "monkey", "tokens", "secretary", "key", "id"] {
            assert!(!r.is_sensitive_key(k), "{k}");
        }
        let out = r.redact_text(r#"{"AccessToken":"a","Client-Secret":"b","PASSWORD":"c"}"#);
        assert_eq!(
            out,
            r#"{"AccessToken":"[REDACTED]","Client-Secret":"[REDACTED]","PASSWORD":"[REDACTED]"}"#
        );
    }

    #[test]
    fn a_top_level_json_array_is_walked_too() {
        let out = r().redact_text(r#"[{"token":"t1"},{"x":[{"secret":"s"}]}, 3, null]"#);
        assert_eq!(
            out,
            r#"[{"token":"[REDACTED]"},{"x":[{"secret":"[REDACTED]"}]}, 3, null]"#
        );
    }

    #[test]
    fn non_json_text_has_query_string_and_form_values_redacted() {
        let r = r();
        assert_eq!(
            r.redact_text("client_id=abc&client_secret=xyz&grant_type=client_credentials"),
            "client_id=abc&client_secret=[REDACTED]&grant_type=client_credentials"
        );
        assert_eq!(
            r.redact_text("GET /ws?Access_Token=AAA HTTP/1.1"),
            "GET /ws?Access_Token=[REDACTED] HTTP/1.1"
        );
        assert_eq!(
            r.redact_text("login password: hunter2; user=bob"),
            "login password: [REDACTED]; user=bob"
        );
        assert_eq!(
            r.redact_text("Authorization: Bearer abc.def.ghi"),
            "Authorization: Bearer [REDACTED]"
        );
        assert_eq!(r.redact_text("token='q w e' x"), "token='[REDACTED]' x");
    }

    #[test]
    fn broken_json_is_still_scanned_for_quoted_pairs() {
        let out = r().redact_text(r#"{"method":"auth","params":{"api_key":"K123","sig"#);
        assert!(!out.contains("K123"), "{out}");
    }

    #[test]
    fn query_strings_inside_json_strings_are_redacted() {
        let out = r().redact_text(r#"{"url":"wss://h/ws?token=T0K&x=1","note":"a=1"}"#);
        assert_eq!(
            out,
            r#"{"url":"wss://h/ws?token=[REDACTED]&x=1","note":"a=1"}"#
        );
    }

    #[test]
    fn double_encoded_json_inside_a_string_is_redacted() {
        let out = r().redact_text(r#"{"data":"{\"token\":\"T0K\",\"n\":1}"}"#);
        assert!(!out.contains("T0K"), "{out}");
        assert!(serde_json::from_str::<Value>(&out).is_ok(), "{out}");
    }

    #[test]
    fn unicode_escaped_keys_cannot_smuggle_a_secret() {
        let out = r().redact_text(r#"{"\u0074oken":"T0K"}"#);
        assert!(!out.contains("T0K"), "{out}");
    }

    #[test]
    fn frames_without_credentials_are_returned_borrowed() {
        let text = r#"{"channel":"ticker.BTC-PERPETUAL","data":{"price":100.5,"keys":[1,2]}}"#;
        assert!(matches!(r().redact_text(text), Cow::Borrowed(_)));
        // Mentioning a key without a value changes nothing either.
        let text = "please send your token";
        assert!(matches!(r().redact_text(text), Cow::Borrowed(_)));
    }

    #[test]
    fn none_redacts_nothing_and_extra_keys_add_to_the_defaults() {
        let text = r#"{"token":"t","session":"s"}"#;
        assert_eq!(Redactor::none().redact_text(text), text);
        let out = Redactor::with_keys(["session"]).redact_text(text);
        assert_eq!(out, r#"{"token":"[REDACTED]","session":"[REDACTED]"}"#);
    }

    #[test]
    fn urls_lose_passwords_user_info_tokens_and_sensitive_parameters() {
        let r = r();
        assert_eq!(
            r.redact_url("wss://bob:pw@example.com/ws?apiKey=K&depth=5"),
            "wss://bob:[REDACTED]@example.com/ws?apiKey=[REDACTED]&depth=5"
        );
        assert_eq!(
            r.redact_url("wss://TOKEN123@example.com/ws"),
            "wss://[REDACTED]@example.com/ws"
        );
        assert_eq!(r.redact_url("wss://example.com/ws"), "wss://example.com/ws");
        assert_eq!(r.redact_url("not a url"), "not a url");
    }

    #[test]
    fn sensitive_headers_are_recognized_by_name() {
        let r = r();
        for h in [
            "Authorization",
            "cookie",
            "X-API-KEY",
            "X-Auth-Token",
            "X-MBX-APIKEY",
            "Api-Signature",
            "x-client-secret",
        ] {
            assert_eq!(r.redact_header(h, "v"), REDACTED, "{h}");
        }
        for h in ["User-Agent", "Accept", "Sec-WebSocket-Protocol", "Origin"] {
            assert_eq!(r.redact_header(h, "v"), "v", "{h}");
        }
    }

    #[test]
    fn redact_json_works_on_values_directly() {
        let mut v = serde_json::json!({"a": [{"Passphrase": "p"}], "b": "x=1&secret=2"});
        assert!(r().redact_json(&mut v));
        assert_eq!(v["a"][0]["Passphrase"], REDACTED);
        assert_eq!(v["b"], "x=1&secret=[REDACTED]");
        assert!(!r().redact_json(&mut v), "a second pass changes nothing");
    }

    /// The prefilter's definition, spelled plainly: the text has a `:`, `=`
    /// or `\\`, and some whole token normalizes to a key or there is a `\\u`.
    fn prefilter_oracle(r: &Redactor, text: &str) -> bool {
        text.contains([':', '=', '\\'])
            && (text.contains("\\u")
                || text
                    .split(|c: char| !is_key_byte(c as u32 as u8) || !c.is_ascii())
                    .any(|token| !token.is_empty() && r.keys.contains(&normalize(token))))
    }

    #[test]
    fn the_word_masks_classify_every_byte_at_every_position_as_fold_does() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                // Surround the byte with each kind of neighbour: a mask must
                // not depend on the bytes beside it.
                for fill in [0u8, b'a', b'_', 0xff, b'\\', b'9'] {
                    let mut word = [fill; 8];
                    word[pos] = b;
                    let w = u64::from_le_bytes(word);
                    let bit = 1u64 << (pos * 8 + 7);
                    assert_eq!(
                        key_byte_mask(w) & bit != 0,
                        FOLD[usize::from(b)] != 0,
                        "{b:#x} at {pos}"
                    );
                    assert_eq!(
                        separator_mask(w) & bit != 0,
                        FOLD[usize::from(b)] == SEPARATOR,
                        "{b:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_prefilter_finds_every_spelling_of_every_key_anywhere() {
        let r = Redactor::with_keys(["session_id", "x"]);
        for key in DEFAULT_SENSITIVE_KEYS.iter().chain(&["SessionId", "X"]) {
            for spelled in [
                key.to_string(),
                key.to_uppercase(),
                format!("_{}-", key.replace('_', "-")),
            ] {
                for text in [
                    format!("{spelled}:"),
                    format!("{{\"{spelled}\":1}}"),
                    format!("a b&{spelled}=1"),
                    format!("é{spelled}é="),
                ] {
                    assert!(r.might_contain_key(&text), "{text}");
                }
                // Part of a longer token is not the key.
                assert!(!r.might_contain_key(&format!("{spelled}q=1")), "{spelled}q");
                // Without a `:` or `=` there is no value to redact.
                assert!(!r.might_contain_key(&spelled), "{spelled}");
            }
        }
        assert!(!r.might_contain_key(&"abcdefghijklmnopqrstuvwxyz=".repeat(4)));
        assert!(!Redactor::none().might_contain_key("token=1"));
    }

    proptest! {
        #[test]
        fn the_prefilter_is_exactly_its_definition(
            s in "([\\[\\]{}\":=&' ,é_-]|token|api|Key|secret|auth|T_O_K_E_N|x|\\\\u|\\\\|[a-z]){0,30}",
        ) {
            let custom = Redactor::with_keys(["x"]);
            prop_assert_eq!(custom.might_contain_key(&s), prefilter_oracle(&custom, &s), "{}", s);
            prop_assert_eq!(r().might_contain_key(&s), prefilter_oracle(&r(), &s), "{}", s);
        }

        #[test]
        fn text_without_a_colon_an_equals_sign_or_a_backslash_is_never_changed(
            s in "([\\[\\]{}\"&' ,é_\n-]|token|api_key|Key|secret|Bearer|[a-z0-9]){0,40}",
        ) {
            prop_assert!(!has_pair_or_escape(s.as_bytes()));
            let custom = Redactor::with_keys(["x", "my.key"]);
            for r in [r(), custom] {
                prop_assert_eq!(r.redact_text(&s), Cow::Borrowed(s.as_str()));
                // ...whatever the quick check says: the full redaction agrees.
                let stripped = r.redact_json_text(&s);
                prop_assert_eq!(&*stripped, s.as_str());
            }
        }

        #[test]
        fn redacting_arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = r().redact_text(&s);
            let _ = r().redact_url(&s);
        }

        #[test]
        fn redacting_keyish_text_never_panics(s in "[\\[\\]{}\":=&'\\\\ ,a-z_tokensecret]{0,80}") {
            let _ = r().redact_text(&s);
        }

        #[test]
        fn a_secret_under_a_sensitive_key_never_survives_json_redaction(
            secret in "[A-Za-z0-9]{6,20}",
            key in prop::sample::select(DEFAULT_SENSITIVE_KEYS),
            depth in 0usize..4,
        ) {
            let mut v = serde_json::json!({ key: secret.clone() });
            for _ in 0..depth {
                v = serde_json::json!({ "outer": [v] });
            }
            let text = v.to_string();
            let out = r().redact_text(&text);
            prop_assert!(!out.contains(&secret), "{}", out);
            prop_assert!(serde_json::from_str::<Value>(&out).is_ok());
        }
    }
}
