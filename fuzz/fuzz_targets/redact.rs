//! The redactor, on arbitrary text.
//!
//! The first byte picks the redactor: even, `Redactor::default()`; odd, the
//! default plus an extra key read from the first line (so keys that are not
//! plain tokens, like `a.b`, are fuzzed too). The rest is the text.
//!
//! - `redact_text` and `redact_url` never panic;
//! - `redact_text` is idempotent: redacting twice is redacting once;
//! - JSON text stays JSON, and after redaction every member under a sensitive
//!   key, at any depth, holds `"[REDACTED]"` and nothing else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use zen_websocket::recorder::{Redactor, REDACTED};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = String::from_utf8_lossy(rest);
    let (redactor, text) = if mode % 2 == 0 {
        (Redactor::default(), &*input)
    } else {
        let (key, text) = input.split_once('\n').unwrap_or((&*input, ""));
        (Redactor::with_keys([key]), text)
    };

    let once = redactor.redact_text(text);
    let twice = redactor.redact_text(&once);
    assert_eq!(once, twice, "not idempotent on {text:?}");
    let _ = redactor.redact_url(text);

    if let Ok(before) = serde_json::from_str::<Value>(text) {
        let after: Value = serde_json::from_str(&once)
            .unwrap_or_else(|e| panic!("JSON {text:?} redacted to non-JSON {once:?}: {e}"));
        assert_redacted(&redactor, &after, text);
        // Redaction replaces values; it never adds or removes members.
        assert_same_shape(&before, &after, text);
    }
});

fn assert_redacted(r: &Redactor, v: &Value, text: &str) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if r.is_sensitive_key(k) {
                    assert_eq!(v, REDACTED, "{k:?} kept a value in {text:?}");
                } else {
                    assert_redacted(r, v, text);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| assert_redacted(r, v, text)),
        _ => {}
    }
}

fn assert_same_shape(before: &Value, after: &Value, text: &str) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            assert!(a.keys().eq(b.keys()), "members changed in {text:?}");
            for (k, va) in a {
                if !matches!(b.get(k), Some(Value::String(s)) if s == REDACTED) {
                    assert_same_shape(va, &b[k], text);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "items changed in {text:?}");
            a.iter()
                .zip(b)
                .for_each(|(x, y)| assert_same_shape(x, y, text));
        }
        // A string may lose `key=value` secrets; any other scalar is kept.
        (Value::String(_), Value::String(_)) => {}
        (a, b) => assert_eq!(a, b, "a value changed in {text:?}"),
    }
}
