//! Property tests of the pure parsers that read bytes from outside: the JSONL
//! entry codec and time stamps, recordings on disk, URLs and headers, inbound
//! JSON-RPC and Deribit messages, and the redactor.
//!
//! Two kinds of property: "never panics, whatever the input" (arbitrary
//! strings and arbitrary JSON trees), and real ones (round trips, idempotence,
//! no secret survives). The fuzz targets in `fuzz/` push the first kind much
//! further; these run in the normal suite and stay fast (proptest's default
//! 256 cases, fewer where a case touches the disk).

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use zen_websocket::adapters::deribit::codes;
use zen_websocket::protocol::jsonrpc::{parse_response, parse_responses, RequestId};
use zen_websocket::protocol::{Inbound, JsonRpc, Protocol};
use zen_websocket::recorder::{
    decode, encode, format_timestamp, parse_timestamp, DecodeError, Direction, Entry, EntryKind,
    Recording, Redactor, DEFAULT_SENSITIVE_KEYS, REDACTED,
};
use zen_websocket::{Config, Endpoint};

/// 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
const MAX_SECS: u64 = 253_402_300_799;

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn arb_dir() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::In),
        Just(Direction::Out),
        Just(Direction::Internal),
    ]
}

/// An instant from 1970 to 9999 with nanoseconds, and the same instant
/// truncated to the microsecond (what the file keeps).
fn arb_instant() -> impl Strategy<Value = (SystemTime, SystemTime)> {
    (0..=MAX_SECS, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        let t = UNIX_EPOCH + Duration::new(secs, nanos);
        let kept = UNIX_EPOCH + Duration::new(secs, nanos / 1000 * 1000);
        (t, kept)
    })
}

/// A frame entry (text, binary or close); the `Redactor::none` encoding must
/// give it back exactly, apart from sub-microsecond time.
fn arb_frame_kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![
        any::<String>().prop_map(EntryKind::Text),
        "\\PC{0,64}".prop_map(EntryKind::Text),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(EntryKind::Binary),
        (prop::option::of(any::<u16>()), any::<String>())
            .prop_map(|(code, reason)| EntryKind::Close { code, reason }),
    ]
}

/// A lifecycle entry. URLs carry no `@`: `redact_url` redacts user info even
/// for `Redactor::none()` (see the ignored regression test below).
fn arb_lifecycle_kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![
        "wss?://[a-z0-9.:/?&=_-]{0,40}".prop_map(|url| EntryKind::Connected { url }),
        any::<String>().prop_map(|cause| EntryKind::Disconnected { cause }),
        (any::<u32>(), any::<u64>())
            .prop_map(|(attempt, delay_ms)| EntryKind::Reconnecting { attempt, delay_ms }),
        any::<u32>().prop_map(|attempt| EntryKind::Reconnected { attempt }),
    ]
}

fn arb_entry(kind: impl Strategy<Value = EntryKind>) -> impl Strategy<Value = (Entry, Entry)> {
    (
        arb_instant(),
        arb_dir(),
        kind,
        prop::option::of(any::<u64>()),
    )
        .prop_map(|((t, kept), dir, kind, conn)| {
            let written = Entry {
                ts: t,
                dir,
                kind: kind.clone(),
                conn,
            };
            let read = Entry {
                ts: kept,
                dir,
                kind,
                conn,
            };
            (written, read)
        })
}

/// Arbitrary JSON trees, biased toward the members the parsers look at
/// (JSON-RPC, Deribit, and the JSONL entry fields), so that the interesting
/// branches are reached rather than only "not an object".
fn arb_json() -> impl Strategy<Value = Value> {
    arb_json_sized(4, 48, 6)
}

/// Small trees, for payloads inside generated messages.
fn arb_small_json() -> BoxedStrategy<Value> {
    arb_json_sized(2, 8, 3).boxed()
}

fn arb_json_sized(depth: u32, size: u32, branch: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..4).prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        prop::sample::select(
            &[
                "2.0",
                "1.0",
                "subscription",
                "heartbeat",
                "test_request",
                "text",
                "binary",
                "close",
                "connected",
                "in",
                "out",
                "sys",
                "2026-12-02T00:31:07.123456Z",
                "AAEC/w==",
            ][..]
        )
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    let width = branch as usize + 1;
    leaf.prop_recursive(depth, size, branch, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..width).prop_map(Value::Array),
            prop::collection::vec((arb_json_key(), inner), 0..width)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arb_json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "jsonrpc",
                "id",
                "result",
                "error",
                "code",
                "message",
                "msg",
                "data",
                "method",
                "params",
                "channel",
                "type",
                "retry_after",
                "reason",
                "ts",
                "dir",
                "binary",
            ][..]
        )
        .prop_map(str::to_owned),
        "[a-z]{0,6}",
        any::<String>(),
    ]
}

// ---------------------------------------------------------------------------
// The JSONL entry codec and time stamps
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn decoding_any_string_never_panics(s in any::<String>()) {
        let _ = decode(&s);
    }

    #[test]
    fn decoding_any_json_value_never_panics(v in arb_json()) {
        let _ = decode(&v.to_string());
    }

    #[test]
    fn decoding_near_valid_entry_objects_never_panics(
        ts in prop_oneof![
            arb_instant().prop_map(|(t, _)| Value::from(format_timestamp(t))),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
                .prop_map(Value::from),
            arb_small_json(),
        ],
        dir in prop_oneof![
            prop::sample::select(&["in", "out", "sys", "internal", "IN", "Sys", ""][..]).prop_map(Value::from),
            arb_small_json(),
        ],
        ty in prop_oneof![
            prop::sample::select(&[
                "text", "binary", "close", "connected", "disconnected",
                "reconnecting", "reconnected", "TEXT", "nope",
            ][..]).prop_map(Value::from),
            arb_small_json(),
        ],
        extra in prop::collection::vec((
            prop::sample::select(&[
                "data", "binary", "code", "reason", "url", "cause",
                "attempt", "delay_ms", "conn",
            ][..]),
            prop_oneof![
                "[A-Za-z0-9+/=_ \\n-]{0,16}".prop_map(Value::from),
                Just(Value::Bool(true)),
                Just(json!({"code": 1000, "reason": "bye"})),
                Just(Value::from(r#"{"code":"1001","reason":"away"}"#)),
                prop::collection::vec(0u64..300, 0..6).prop_map(|v| json!(v)),
                arb_small_json(),
            ],
        ), 0..6),
    ) {
        let mut obj = Map::new();
        obj.insert("ts".into(), ts);
        obj.insert("dir".into(), dir);
        obj.insert("type".into(), ty);
        for (k, v) in extra {
            obj.insert(k.into(), v);
        }
        let _ = decode(&Value::Object(obj).to_string());
    }

    #[test]
    fn frames_round_trip_through_encode_and_decode((written, read) in arb_entry(arb_frame_kind())) {
        let line = encode(&written, &Redactor::none());
        prop_assert!(!line.contains('\n'), "{}", line);
        prop_assert!(!line.contains('\r'), "{}", line);
        prop_assert_eq!(decode(&line), Ok(read));
    }

    #[test]
    fn lifecycle_events_round_trip_through_encode_and_decode((written, read) in arb_entry(arb_lifecycle_kind())) {
        let line = encode(&written, &Redactor::none());
        prop_assert!(!line.contains('\n'), "{}", line);
        prop_assert_eq!(decode(&line), Ok(read));
    }

    #[test]
    fn a_redacted_text_frame_decodes_to_the_redacted_text(
        (written, read) in arb_entry(prop_oneof![
            "\\PC{0,40}",
            "(token|password|x|api_key|[a-z]{1,5})[=: ]{1,2}[a-zA-Z0-9\"']{0,10}( |&|,)?"
        ].prop_map(EntryKind::Text)),
    ) {
        let redactor = Redactor::default();
        let EntryKind::Text(text) = &written.kind else { unreachable!() };
        let expected = Entry {
            kind: EntryKind::Text(redactor.redact_text(text).into_owned()),
            ..read
        };
        prop_assert_eq!(decode(&encode(&written, &redactor)), Ok(expected));
    }

    #[test]
    fn a_cut_off_line_never_decodes((written, _) in arb_entry(arb_frame_kind()), cut in any::<prop::sample::Index>()) {
        // A crash mid-write leaves a prefix of a line. Every proper prefix of a
        // JSON object is invalid JSON, so it must be reported, never misread.
        let line = encode(&written, &Redactor::none());
        let mut at = cut.index(line.len());
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        let decoded = decode(&line[..at]);
        prop_assert!(matches!(decoded, Err(DecodeError::Json(_))), "{:?} from {:?}", decoded, &line[..at]);
    }

    #[test]
    fn surrounding_white_space_and_a_bom_are_ignored(
        (written, read) in arb_entry(arb_frame_kind()),
        before in "[ \t]{0,3}",
        bom in any::<bool>(),
        after in "[ \t\r]{0,3}",
    ) {
        let bom = if bom { "\u{feff}" } else { "" };
        let line = format!("{before}{bom}{}{after}", encode(&written, &Redactor::none()));
        prop_assert_eq!(decode(&line), Ok(read));
    }

    #[test]
    fn formatting_then_parsing_keeps_the_microsecond((t, kept) in arb_instant()) {
        let s = format_timestamp(t);
        prop_assert_eq!(s.len(), 27, "{}", s);
        prop_assert!(s.ends_with('Z'));
        prop_assert_eq!(parse_timestamp(&s).ok(), Some(kept), "{}", s);
    }

    #[test]
    fn formatted_time_stamps_sort_like_the_instants((a, _) in arb_instant(), (b, _) in arb_instant()) {
        // What makes `sort` and `jq` on the `ts` column work.
        let (sa, sb) = (format_timestamp(a), format_timestamp(b));
        if a <= b {
            prop_assert!(sa <= sb, "{} > {}", sa, sb);
        } else {
            prop_assert!(sa >= sb, "{} < {}", sa, sb);
        }
    }

    #[test]
    fn an_offset_time_stamp_reads_as_the_same_utc_instant(
        (t, kept) in arb_instant(),
        east in any::<bool>(),
        hours in 0u64..24,
        minutes in 0u64..60,
    ) {
        // Write local time at the offset, then read it back as UTC.
        let offset = Duration::from_secs(hours * 3600 + minutes * 60);
        let local = if east { t.checked_add(offset) } else { t.checked_sub(offset) };
        let in_range = |x: SystemTime| {
            x.duration_since(UNIX_EPOCH).is_ok_and(|d| d.as_secs() <= MAX_SECS)
        };
        prop_assume!(local.is_some_and(in_range));
        let utc = format_timestamp(local.unwrap_or(t));
        let sign = if east { '+' } else { '-' };
        let s = format!("{}{sign}{hours:02}:{minutes:02}", &utc[..26]);
        prop_assert_eq!(parse_timestamp(&s).ok(), Some(kept), "{}", s);
    }

    #[test]
    fn parsing_any_string_as_a_time_stamp_never_panics(s in any::<String>()) {
        let _ = parse_timestamp(&s);
    }
}

// ---------------------------------------------------------------------------
// Recordings on disk
// ---------------------------------------------------------------------------

static FILE_NUMBER: AtomicU64 = AtomicU64::new(0);

/// A file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn with(bytes: &[u8]) -> TempFile {
        let n = FILE_NUMBER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("zen-properties-{}-{n}.jsonl", std::process::id()));
        fs::write(&path, bytes).expect("write a temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// One line of a generated recording: a good entry, or garbage that cannot
/// decode (bad JSON, bad UTF-8, or JSON that is not an entry).
#[derive(Debug, Clone)]
enum Line {
    Good(Vec<u8>, Entry),
    Bad(Vec<u8>),
}

fn arb_line() -> impl Strategy<Value = Line> {
    prop_oneof![
        3 => arb_entry(prop_oneof![arb_frame_kind(), arb_lifecycle_kind()])
            .prop_map(|(w, r)| Line::Good(encode(&w, &Redactor::none()).into_bytes(), r)),
        1 => prop::collection::vec(any::<u8>(), 1..40)
            .prop_map(|mut b| { b.retain(|c| *c != b'\n'); b })
            .prop_filter("must not be blank or an entry", |b| {
                !b.trim_ascii().is_empty()
                    && std::str::from_utf8(b).map_or(true, |s| decode(s).is_err())
            })
            .prop_map(Line::Bad),
        1 => arb_json()
            .prop_map(|v| v.to_string().into_bytes())
            .prop_filter("must not be an entry", |b| {
                std::str::from_utf8(b).map_or(true, |s| decode(s).is_err())
            })
            .prop_map(Line::Bad),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_recording_yields_every_good_line_and_numbers_every_bad_one(
        lines in prop::collection::vec(arb_line(), 0..12),
        blank_lines in prop::collection::vec(any::<bool>(), 12),
        final_newline in any::<bool>(),
        crlf in any::<bool>(),
    ) {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        let mut number = 0;
        for (i, line) in lines.iter().enumerate() {
            if blank_lines[i] {
                bytes.extend_from_slice(b"  \n");
                number += 1;
            }
            number += 1;
            let last = i + 1 == lines.len();
            let has_newline = !last || final_newline;
            let (text, outcome) = match line {
                Line::Good(text, entry) => (text, Ok(entry.clone())),
                Line::Bad(text) => (text, Err((number, !has_newline))),
            };
            bytes.extend_from_slice(text);
            if has_newline {
                bytes.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            expected.push(outcome);
        }
        let file = TempFile::with(&bytes);
        let got: Vec<_> = Recording::open(&file.0)
            .expect("open the recording")
            .map(|item| item.map_err(|bad| (bad.line, bad.truncated)))
            .collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn a_recording_of_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let file = TempFile::with(&bytes);
        let items = Recording::open(&file.0).expect("open the recording").count();
        // Each item stands for one non-blank line.
        prop_assert!(items <= bytes.split(|b| *b == b'\n').count());
    }
}

// ---------------------------------------------------------------------------
// URLs and the config builder
// ---------------------------------------------------------------------------

/// A valid URL and what it must parse to.
#[derive(Debug, Clone)]
struct UrlCase {
    url: String,
    tls: bool,
    host: String,
    port: u16,
    path_and_query: String,
}

fn arb_host() -> impl Strategy<Value = (String, String)> {
    // (as written in the URL, as the Endpoint keeps it)
    prop_oneof![
        prop::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", 1..4)
            .prop_map(|labels| labels.join("."))
            .prop_map(|h| (h.clone(), h)),
        any::<[u8; 4]>().prop_map(|ip| {
            let h = std::net::Ipv4Addr::from(ip).to_string();
            (h.clone(), h)
        }),
        any::<[u16; 8]>().prop_map(|ip| {
            let h = std::net::Ipv6Addr::from(ip).to_string();
            (format!("[{h}]"), h)
        }),
        Just(("localhost".to_string(), "localhost".to_string())),
    ]
}

fn arb_url() -> impl Strategy<Value = UrlCase> {
    (
        "[wW][sS]",
        any::<bool>(),
        arb_host(),
        prop::option::of(1u16..=65535),
        prop::collection::vec("[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,8}", 0..4),
        prop::option::of("[A-Za-z0-9._~%!$&'()*+,;=:@/?-]{0,24}"),
    )
        .prop_map(|(ws, tls, (host_in_url, host), port, segments, query)| {
            let scheme = if tls { format!("{ws}s") } else { ws };
            let path: String = segments.iter().map(|s| format!("/{s}")).collect();
            let mut url = format!("{scheme}://{host_in_url}");
            if let Some(p) = port {
                url.push_str(&format!(":{p}"));
            }
            url.push_str(&path);
            let mut path_and_query = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            if let Some(q) = &query {
                url.push('?');
                url.push_str(q);
                path_and_query.push('?');
                path_and_query.push_str(q);
            }
            UrlCase {
                url,
                tls,
                host,
                port: port.unwrap_or(if tls { 443 } else { 80 }),
                path_and_query,
            }
        })
}

/// Header names `http` accepts: RFC 7230 tokens.
fn arb_header_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}"
}

/// Header values `http` accepts: visible ASCII, spaces and tabs.
fn arb_header_value() -> impl Strategy<Value = String> {
    "[ -~\t]{0,40}"
}

/// The fields a builder given only a URL and headers can complain about.
const URL_AND_HEADER_FIELDS: &[&str] = &["url", "header"];

proptest! {
    #[test]
    fn parsing_any_string_as_a_url_never_panics(s in any::<String>()) {
        if let Err(e) = Endpoint::parse(&s) {
            prop_assert_eq!(e.field, "url");
        }
    }

    #[test]
    fn parsing_url_like_strings_never_panics(s in "([wW][sS]{1,2}|http|)(://)?[\\[\\]:@/?#%a-z0-9. \t\u{0}é-]{0,30}") {
        if let Ok(e) = Endpoint::parse(&s) {
            prop_assert!(!e.host.is_empty());
            prop_assert!(e.port != 0);
            prop_assert!(e.path_and_query.starts_with('/'), "{:?}", e);
        }
    }

    #[test]
    fn valid_urls_keep_their_host_port_path_and_query(case in arb_url()) {
        let e = Endpoint::parse(&case.url);
        prop_assert!(e.is_ok(), "{}: {:?}", case.url, e);
        let e = e.unwrap_or_else(|_| unreachable!());
        prop_assert_eq!(e.tls, case.tls, "{}", case.url);
        prop_assert_eq!(&e.host, &case.host, "{}", case.url);
        prop_assert_eq!(e.port, case.port, "{}", case.url);
        prop_assert_eq!(&e.path_and_query, &case.path_and_query, "{}", case.url);
        // The canonical form parses to the same endpoint.
        prop_assert_eq!(Endpoint::parse(&e.url()).ok(), Some(e));
    }

    #[test]
    fn a_url_with_a_fragment_or_user_info_is_refused(case in arb_url(), fragment in any::<bool>()) {
        let bad = if fragment {
            format!("{}#frag", case.url)
        } else {
            case.url.replacen("://", "://user:pw@", 1)
        };
        let e = Endpoint::parse(&bad);
        prop_assert!(e.as_ref().is_err_and(|e| e.field == "url"), "{}: {:?}", bad, e);
    }

    #[test]
    fn building_from_any_strings_never_panics_and_errors_name_a_field(
        url in prop_oneof![any::<String>(), arb_url().prop_map(|c| c.url)],
        headers in prop::collection::vec((
            prop_oneof![any::<String>(), arb_header_name()],
            prop_oneof![any::<String>(), arb_header_value()],
        ), 0..4),
    ) {
        let mut b = Config::builder(url.clone());
        for (k, v) in &headers {
            b = b.header(k.clone(), v.clone());
        }
        match b.build() {
            Ok(config) => {
                prop_assert_eq!(Endpoint::parse(&url).ok(), Some(config.endpoint().clone()));
            }
            Err(e) => {
                prop_assert!(URL_AND_HEADER_FIELDS.contains(&e.field), "{:?}", e);
                prop_assert!(!e.rule.is_empty());
                prop_assert!(e.to_string().contains(e.field), "{}", e);
                if Endpoint::parse(&url).is_ok() {
                    prop_assert_eq!(e.field, "header");
                } else {
                    prop_assert_eq!(e.field, "url");
                }
            }
        }
    }

    #[test]
    fn valid_headers_on_a_valid_url_build(
        case in arb_url(),
        headers in prop::collection::vec((arb_header_name(), arb_header_value()), 0..4),
    ) {
        let mut b = Config::builder(case.url.clone());
        for (k, v) in headers {
            b = b.header(k, v);
        }
        let built = b.build();
        prop_assert!(built.is_ok(), "{}: {:?}", case.url, built);
    }

    #[test]
    fn a_bad_header_value_is_refused_without_echoing_it(
        case in arb_url(),
        name in arb_header_name(),
        secret in "[A-Za-z0-9]{12,20}",
        bad in prop::sample::select(&["\r\n", "\n", "\r", "\u{0}", "\u{1b}", "\u{7f}"][..]),
    ) {
        let value = format!("Bearer {secret}{bad}X-Injected: 1");
        let e = Config::builder(case.url).header(name, value).build();
        prop_assert!(e.as_ref().is_err_and(|e| e.field == "header"), "{:?}", e);
        let shown = e.map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        prop_assert!(!shown.contains(&secret), "{}", shown);
    }
}

// ---------------------------------------------------------------------------
// Inbound messages: JSON-RPC and Deribit
// ---------------------------------------------------------------------------

fn arb_id() -> impl Strategy<Value = RequestId> {
    prop_oneof![
        any::<u64>().prop_map(RequestId::Number),
        "\\PC{0,10}".prop_map(RequestId::Str),
    ]
}

/// A response as a server may write it: with or without `"jsonrpc"`, with a
/// result or with an error (`message` or `msg`), plus unrelated members.
fn arb_response() -> impl Strategy<Value = (Value, RequestId, bool)> {
    (
        arb_id(),
        any::<bool>(),
        prop_oneof![
            arb_small_json().prop_map(|r| ("result", r)),
            (any::<i64>(), "\\PC{0,10}", any::<bool>()).prop_map(|(code, m, msg)| {
                let key = if msg { "msg" } else { "message" };
                ("error", json!({"code": code, key: m}))
            }),
        ],
        prop::collection::vec(("us[A-Z][a-z]{1,4}", arb_small_json()), 0..3),
    )
        .prop_map(|(id, with_version, (member, payload), extra)| {
            let mut obj: Map<String, Value> = extra.into_iter().collect();
            if with_version {
                obj.insert("jsonrpc".into(), json!("2.0"));
            }
            obj.insert("id".into(), id.to_value());
            let is_error = member == "error";
            obj.insert(member.into(), payload);
            (Value::Object(obj), id, is_error)
        })
}

fn same_variant(a: &Inbound, b: &Inbound) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

proptest! {
    #[test]
    fn inbound_parsers_never_panic_on_any_string(s in any::<String>()) {
        let parsed: Option<Value> = serde_json::from_str(&s).ok();
        let _ = JsonRpc::new().classify(&s, parsed.as_ref());
        let _ = JsonRpc::new().classify(&s, None);
        if let Some(v) = &parsed {
            let _ = parse_responses(v);
        }
        prop_assert_eq!(codes::classify(&s), codes::classify_value(parsed.as_ref()));
    }

    #[test]
    fn inbound_parsers_never_panic_on_any_json(v in arb_json()) {
        let text = v.to_string();
        let responses = parse_responses(&v);
        let rpc = JsonRpc::new().classify(&text, Some(&v));
        let deribit = codes::classify_value(Some(&v));
        // Floats may not survive a text round trip exactly: compare kinds only.
        prop_assert!(same_variant(&codes::classify(&text), &deribit));
        // The default dialect reports exactly what `parse_responses` reads.
        match (&rpc, &responses) {
            (Inbound::Response(r), Some(p)) => prop_assert_eq!(r, p),
            (_, None) => prop_assert!(!matches!(rpc, Inbound::Response(_))),
            (other, Some(_)) => prop_assert!(false, "responses classified as {:?}", other),
        }
        // A batch never yields more responses than it has elements; anything
        // else yields at most one.
        if let Some(r) = &responses {
            prop_assert!(!r.is_empty());
            match &v {
                Value::Array(items) => prop_assert!(r.len() <= items.len()),
                _ => prop_assert_eq!(r.len(), 1),
            }
        }
        if let Inbound::Response(r) = &deribit {
            for resp in r {
                if let Err(e) = &resp.outcome {
                    let _ = codes::map_error(e.code, &e.message, e.data.clone());
                }
            }
        }
    }

    #[test]
    fn map_error_never_panics(code in prop_oneof![any::<i64>(), Just(10028i64), Just(13009i64)], message in any::<String>(), data in prop::option::of(arb_small_json())) {
        let e = codes::map_error(code, &message, data);
        let _ = (e.category(), e.recovery(), e.to_string());
    }

    #[test]
    fn a_well_formed_response_is_read_with_its_id((v, id, is_error) in arb_response()) {
        let r = parse_response(&v);
        prop_assert!(r.as_ref().is_some_and(|r| r.id == id && r.is_error() == is_error), "{} -> {:?}", v, r);
        let text = v.to_string();
        let classified = JsonRpc::new().classify(&text, Some(&v));
        prop_assert!(
            matches!(&classified, Inbound::Response(rs) if rs.len() == 1 && rs[0].id == id),
            "{:?}", classified
        );
    }

    #[test]
    fn a_batch_keeps_every_response_in_order(items in prop::collection::vec(arb_response(), 1..6)) {
        let batch = Value::Array(items.iter().map(|(v, _, _)| v.clone()).collect());
        let ids: Vec<RequestId> = items.iter().map(|(_, id, _)| id.clone()).collect();
        let got: Option<Vec<RequestId>> = parse_responses(&batch).map(|r| r.into_iter().map(|r| r.id).collect());
        prop_assert_eq!(got, Some(ids));
    }

    #[test]
    fn a_notification_on_the_subscription_method_is_subscription_data(
        channel in "\\PC{0,20}",
        data in arb_small_json(),
        with_version in any::<bool>(),
    ) {
        let mut v = json!({"method": "subscription", "params": {"channel": channel, "data": data}});
        if with_version {
            v["jsonrpc"] = json!("2.0");
        }
        let expected = Inbound::Subscription { channel: channel.clone(), data: data.clone() };
        prop_assert_eq!(JsonRpc::new().classify(&v.to_string(), Some(&v)), expected.clone());
        prop_assert_eq!(codes::classify_value(Some(&v)), expected);
    }

    #[test]
    fn every_deribit_test_request_gets_a_public_test_reply(
        extra_params in prop::collection::vec(("[a-z]{1,6}", arb_small_json()), 0..3),
        with_version in any::<bool>(),
    ) {
        let mut params: Map<String, Value> = extra_params.into_iter().collect();
        params.insert("type".into(), json!("test_request"));
        let mut v = json!({"method": "heartbeat", "params": params});
        if with_version {
            v["jsonrpc"] = json!("2.0");
        }
        let Inbound::Heartbeat { reply: Some(reply) } = codes::classify(&v.to_string()) else {
            return Err(TestCaseError::fail(format!("no reply to {v}")));
        };
        let reply: Value = serde_json::from_str(&reply).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&reply["method"], "public/test");
        prop_assert_eq!(&reply["id"], codes::HEARTBEAT_REPLY_ID);
    }
}

// ---------------------------------------------------------------------------
// The redactor
// ---------------------------------------------------------------------------

/// An oracle independent of the redactor: ASCII lowercase, no `_` or `-`.
fn normalized(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn is_sensitive(key: &str) -> bool {
    let k = normalized(key);
    DEFAULT_SENSITIVE_KEYS.iter().any(|s| normalized(s) == k)
}

/// A sensitive key as a client may spell it: `apiKey`, `API-KEY`, `_api__key`…
fn arb_sensitive_key() -> impl Strategy<Value = String> {
    (
        prop::sample::select(DEFAULT_SENSITIVE_KEYS),
        prop::collection::vec((any::<bool>(), 0u8..6), 16),
    )
        .prop_map(|(key, choices)| {
            let letters: Vec<char> = normalized(key).chars().collect();
            let mut out = String::new();
            for (i, c) in letters.iter().enumerate() {
                let (upper, sep) = choices[i % choices.len()];
                match sep {
                    0 => out.push('_'),
                    1 => out.push('-'),
                    _ => {}
                }
                out.push(if upper { c.to_ascii_uppercase() } else { *c });
            }
            if choices[15].1 == 0 {
                out.push('_');
            }
            out
        })
}

/// Keys and values that cannot trigger any redaction: no sensitive key, no
/// `=` or `:`, no `z` or `@` (used by the secrets and the placeholder).
fn arb_filler_key() -> impl Strategy<Value = String> {
    "[a-y_]{1,8}".prop_filter("not sensitive", |k| !is_sensitive(k))
}

fn arb_filler() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-y0-9 .,]{0,12}".prop_map(Value::from),
    ]
}

/// Where a secret goes in the tree before it is generated.
const PLACEHOLDER: &str = "@@secret@@";

/// What a sensitive key may hold: the secret as a string, or inside an array
/// or an object.
fn arb_secret_holder() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(Value::from(PLACEHOLDER)),
        1 => prop::collection::vec(arb_filler(), 0..3).prop_map(|mut v| {
            v.push(Value::from(PLACEHOLDER));
            Value::Array(v)
        }),
        1 => (arb_filler_key(), arb_filler()).prop_map(|(k, f)| {
            json!({ k: [f, {"inner": PLACEHOLDER}] })
        }),
    ]
}

/// A JSON tree of filler with sensitive members anywhere (in objects at any
/// depth, inside arrays), always an object at the root, always holding at
/// least one secret.
fn arb_tree_with_secrets() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => arb_filler(),
        1 => (arb_sensitive_key(), arb_secret_holder()).prop_map(|(k, h)| json!({ k: h })),
    ];
    let tree = leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![3 => arb_filler_key(), 1 => arb_sensitive_key()],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    });
    (
        arb_sensitive_key(),
        arb_secret_holder(),
        prop::collection::vec((arb_filler_key(), tree), 0..4),
        prop::collection::vec((arb_filler_key(), any::<bool>()), 0..3),
    )
        .prop_map(|(key, holder, siblings, wrappers)| {
            let mut obj: Map<String, Value> = siblings.into_iter().collect();
            obj.insert(key, holder);
            let mut v = Value::Object(obj);
            for (k, in_array) in wrappers {
                v = if in_array {
                    json!({ k: [1, v, "x"] })
                } else {
                    json!({ k: v })
                };
            }
            v
        })
}

fn replace_placeholder(v: &mut Value, secret: &str) {
    match v {
        Value::String(s) if s == PLACEHOLDER => *s = secret.to_owned(),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| replace_placeholder(i, secret)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|i| replace_placeholder(i, secret)),
        _ => {}
    }
}

/// What redaction must make of a tree of filler and secrets.
fn expected_redaction(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_sensitive(k) {
                        Value::from(REDACTED)
                    } else {
                        expected_redaction(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(expected_redaction).collect()),
        other => other.clone(),
    }
}

fn contains_string(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s.contains(needle),
        Value::Array(items) => items.iter().any(|i| contains_string(i, needle)),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.contains(needle) || contains_string(v, needle)),
        _ => false,
    }
}

/// JSON text as other encoders write it: spacing and newlines anywhere
/// between tokens, and key characters written as `\uXXXX` escapes. `seed`
/// drives the choices.
fn write_json(v: &Value, seed: &mut u64, out: &mut String) {
    fn next(seed: &mut u64) -> u64 {
        // xorshift64: any sequence will do, it only needs to vary.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }
    fn ws(seed: &mut u64, out: &mut String) {
        match next(seed) % 8 {
            0 => out.push(' '),
            1 => out.push_str("\n  "),
            2 => out.push('\t'),
            _ => {}
        }
    }
    fn key(k: &str, seed: &mut u64, out: &mut String) {
        out.push('"');
        for c in k.chars() {
            if c == '"' || c == '\\' || c.is_control() || next(seed) % 4 == 0 {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            } else {
                out.push(c);
            }
        }
        out.push('"');
    }
    ws(seed, out);
    match v {
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(seed, out);
                key(k, seed, out);
                ws(seed, out);
                out.push(':');
                write_json(v, seed, out);
            }
            ws(seed, out);
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(v, seed, out);
            }
            ws(seed, out);
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
    ws(seed, out);
}

#[derive(Debug, Clone, Copy)]
enum Style {
    Compact,
    Pretty,
    Mixed(u64),
}

fn arb_style() -> impl Strategy<Value = Style> {
    prop_oneof![
        Just(Style::Compact),
        Just(Style::Pretty),
        any::<u64>().prop_map(|s| Style::Mixed(s | 1)),
    ]
}

fn render(v: &Value, style: Style) -> String {
    match style {
        Style::Compact => v.to_string(),
        Style::Pretty => serde_json::to_string_pretty(v).unwrap_or_default(),
        Style::Mixed(mut seed) => {
            let mut out = String::new();
            write_json(v, &mut seed, &mut out);
            out
        }
    }
}

/// Free text in the shapes the scanner reads: `key=value`, `key: value`,
/// quoted values, `Bearer` schemes, query strings, escaped quotes.
fn arb_keyish_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        arb_sensitive_key(),
        Just("Bearer ".to_string()),
        Just("basic ".to_string()),
        Just(REDACTED.to_string()),
        prop::sample::select(
            &[
                "=", ":", ": ", " = ", "&", "?", ";", ",", " ", "\"", "'", "\\\"", "\\", "[", "]",
                "{", "}", "\t", "\n", "#", "é",
            ][..]
        )
        .prop_map(str::to_owned),
        "[a-zA-Z0-9]{1,6}",
    ];
    prop::collection::vec(token, 0..16).prop_map(|t| t.concat())
}

proptest! {
    #[test]
    fn redacting_any_string_never_panics_and_is_idempotent(s in any::<String>()) {
        let r = Redactor::default();
        let once = r.redact_text(&s).into_owned();
        prop_assert_eq!(r.redact_text(&once).into_owned(), once.clone());
        let _ = r.redact_url(&s);
    }

    #[test]
    fn redacting_keyish_text_is_idempotent(s in arb_keyish_text()) {
        let r = Redactor::default();
        let once = r.redact_text(&s).into_owned();
        prop_assert_eq!(r.redact_text(&once).into_owned(), once.clone(), "from {:?}", s);
    }

    #[test]
    fn redacting_keyish_text_inside_json_strings_is_idempotent(
        parts in prop::collection::vec((arb_sensitive_key(), arb_keyish_text()), 1..4),
    ) {
        let v = Value::Object(parts.into_iter().map(|(k, t)| (format!("x{k}"), Value::from(t))).collect());
        let text = v.to_string();
        let r = Redactor::default();
        let once = r.redact_text(&text).into_owned();
        prop_assert_eq!(r.redact_text(&once).into_owned(), once.clone(), "from {}", text);
        prop_assert!(serde_json::from_str::<Value>(&once).is_ok(), "{}", once);
    }

    #[test]
    fn redacting_any_json_never_panics_and_is_idempotent(v in arb_json(), style in arb_style()) {
        let r = Redactor::default();
        let text = render(&v, style);
        let once = r.redact_text(&text).into_owned();
        prop_assert_eq!(r.redact_text(&once).into_owned(), once.clone(), "from {}", text);
        // Valid JSON stays valid JSON.
        prop_assert!(serde_json::from_str::<Value>(&once).is_ok(), "{}", once);
    }

    #[test]
    fn redacting_with_any_extra_key_never_panics(key in any::<String>(), s in prop_oneof![any::<String>(), arb_keyish_text()]) {
        let r = Redactor::with_keys([key.as_str()]);
        let once = r.redact_text(&s).into_owned();
        let _ = r.redact_text(&once);
        let _ = r.redact_url(&s);
        let _ = r.is_sensitive_header(&key);
    }

    #[test]
    fn no_secret_under_a_sensitive_key_survives(
        tree in arb_tree_with_secrets(),
        secret in "Z[0-9]{3}(\\PC|[\"\\\\\\]}\\[{,:=])\\PC{0,12}",
        style in arb_style(),
    ) {
        let mut v = tree;
        replace_placeholder(&mut v, &secret);
        let text = render(&v, style);
        let parsed: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        let expected = expected_redaction(&parsed);
        let r = Redactor::default();
        let out = r.redact_text(&text).into_owned();

        prop_assert!(!out.contains(&secret), "secret {:?} survived in {}", secret, out);
        let escaped = serde_json::to_string(&secret).unwrap_or_default();
        prop_assert!(!out.contains(escaped.trim_matches('"')), "secret {:?} survived in {}", secret, out);
        let redacted: Value = serde_json::from_str(&out).map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?;
        prop_assert!(!contains_string(&redacted, &secret), "secret {:?} survived in {}", secret, out);
        // Exactly the sensitive members change.
        prop_assert_eq!(&redacted, &expected, "{}", text);
        prop_assert_eq!(r.redact_text(&out).into_owned(), out.clone());
        // The compact form keeps every byte outside the replaced values (the
        // expected text is rendered from `v`, not `parsed`, so that floats
        // keep their digits).
        if matches!(style, Style::Compact) {
            prop_assert_eq!(out, expected_redaction(&v).to_string());
        }
    }
}

// ---------------------------------------------------------------------------
// Regressions: failing cases of known bugs, kept until they are fixed.
// ---------------------------------------------------------------------------

// Found by `fuzz/run.sh redact` (on `"s…token\":\"1ses…bscauth"`, a JSON
// string): a JSON text that is a string, not an object or an array, is
// scanned as free text, and a value opened with a quote (`\"` or `'`) that
// is never closed runs to the end of the text, the closing `"` included.
#[test]
fn redacting_a_json_string_keeps_it_json() {
    let r = Redactor::default();
    for text in [r#""password: 'hunter2""#, r#""token\":\"abc""#] {
        assert!(serde_json::from_str::<Value>(text).is_ok(), "{text}");
        let out = r.redact_text(text);
        assert!(!out.contains("hunter2") && !out.contains("abc"), "{out}");
        assert!(
            serde_json::from_str::<Value>(&out).is_ok(),
            "{text} -> {out}"
        );
    }
}

proptest! {
    #[test]
    fn redacting_any_json_string_keeps_it_json(
        before in "[a-z ]{0,6}",
        key in arb_sensitive_key(),
        separator in prop::sample::select(&["=", ":", ": ", " = "][..]),
        quote in prop::sample::select(&["'", "\""][..]),
        value in "[a-z0-9 ]{1,8}",
    ) {
        let text = Value::from(format!("{before}{key}{separator}{quote}{value}")).to_string();
        let out = Redactor::default().redact_text(&text).into_owned();
        prop_assert!(serde_json::from_str::<Value>(&out).is_ok(), "{} -> {}", text, out);
    }
}

// Found by `fuzz/run.sh config_url` (artifact `ws://%::0]:9801/?x=y`): hosts
// are barely validated, so a host with `]` (or `[`, or an unbracketed `:`) is
// accepted, and `Endpoint::url` then writes a URL that does not parse, which
// breaks `Config::to_builder().build()` on a config that built.
#[test]
fn a_config_that_built_rebuilds_from_to_builder() {
    for url in ["ws://a]:b:1", "ws://%::0]:9801/?x=y"] {
        if let Ok(config) = Config::new(url) {
            let rebuilt = config.to_builder().build();
            assert!(rebuilt.is_ok(), "{url} -> {} -> {rebuilt:?}", config.url());
        }
    }
}

proptest! {
    #[test]
    fn every_accepted_url_has_a_canonical_form_that_parses_back(
        s in "[wW][sS]{1,2}://[\\[\\]:%a-z0-9.]{1,16}(:[0-9]{1,5})?(/[a-z?=&]{0,8})?",
    ) {
        if let Ok(e) = Endpoint::parse(&s) {
            prop_assert_eq!(Endpoint::parse(&e.url()).ok(), Some(e), "{}", s);
        }
    }
}

#[test]
fn redactor_none_changes_no_url() {
    let url = "wss://user:pw@example.com/ws";
    assert_eq!(Redactor::none().redact_url(url), url);
    let e = Entry {
        ts: UNIX_EPOCH,
        dir: Direction::Internal,
        kind: EntryKind::Connected { url: url.into() },
        conn: None,
    };
    assert_eq!(decode(&encode(&e, &Redactor::none())), Ok(e));
}
