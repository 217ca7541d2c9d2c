//! Classification of inbound text: the default JSON-RPC dialect, JSON-RPC
//! response parsing, and the Deribit dialect, on the input as text and as the
//! JSON it parses to (when it does).
//!
//! - nothing panics (`Protocol::classify` must never panic, whatever the input);
//! - `JsonRpc` reports a `Response` exactly when `parse_responses` reads one,
//!   with the same responses; a batch never yields more responses than items;
//! - Deribit's `classify(text)` is `classify_value` of the parsed text, and
//!   `map_error` takes every error it reports.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use zen_websocket::adapters::deribit::codes;
use zen_websocket::protocol::jsonrpc::parse_responses;
use zen_websocket::protocol::{Inbound, JsonRpc, Protocol};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    let rpc = JsonRpc::new();

    assert_eq!(rpc.classify(&text, None), Inbound::Other);
    let classified = rpc.classify(&text, parsed.as_ref());
    if let Some(v) = &parsed {
        let responses = parse_responses(v);
        match (&classified, &responses) {
            (Inbound::Response(got), Some(read)) => assert_eq!(got, read),
            (Inbound::Response(_), None) => panic!("a response that parse_responses does not read"),
            (other, Some(_)) => panic!("responses classified as {other:?}"),
            _ => {}
        }
        if let Some(r) = &responses {
            assert!(!r.is_empty());
            match v {
                Value::Array(items) => assert!(r.len() <= items.len()),
                _ => assert_eq!(r.len(), 1),
            }
        }
    } else {
        assert_eq!(classified, Inbound::Other);
    }

    let deribit = codes::classify(&text);
    assert_eq!(deribit, codes::classify_value(parsed.as_ref()));
    if let Inbound::Response(responses) = &deribit {
        for r in responses {
            if let Err(e) = &r.outcome {
                let err = codes::map_error(e.code, &e.message, e.data.clone());
                let _ = (err.category(), err.recovery(), err.to_string());
            }
        }
    }
    if let Inbound::Heartbeat { reply: Some(reply) } = &deribit {
        let reply: Value = serde_json::from_str(reply).expect("the heartbeat reply is JSON");
        assert_eq!(reply["method"], "public/test");
    }
});
