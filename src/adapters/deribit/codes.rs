//! Deribit's error codes and message shapes, as pure functions.
//!
//! Codes are those of Deribit's API v2 "RPC Error Codes" table. Only the ones
//! whose meaning is unambiguous are mapped to a dedicated [`Error`] variant;
//! every other code stays an [`Error::Rpc`] with Deribit's code, message and
//! data untouched, so nothing is lost by the mapping.
//!
//! ```
//! use serde_json::json;
//! use zen_websocket::adapters::deribit::codes::{classify, map_error};
//! use zen_websocket::protocol::Inbound;
//! use zen_websocket::{Error, ErrorCategory};
//!
//! let e = map_error(13009, "unauthorized", Some(json!({"reason": "invalid_token"})));
//! assert_eq!(e.category(), ErrorCategory::Auth);
//!
//! let hb = classify(r#"{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}"#);
//! assert!(matches!(hb, Inbound::Heartbeat { reply: Some(text) } if text.contains("public/test")));
//! ```

use std::time::Duration;

use serde_json::{json, Value};

use crate::protocol::jsonrpc::{Request, RequestId};
use crate::protocol::{classify_jsonrpc, Inbound};
use crate::Error;

/// `authorization_required`: authorization issue, invalid or absent signature.
pub const AUTHORIZATION_REQUIRED: i64 = 10000;
/// `too_many_requests`: the rate limit was exceeded (Deribit also ends the session).
pub const TOO_MANY_REQUESTS: i64 = 10028;
/// `invalid_credentials`: the client id or secret is wrong.
pub const INVALID_CREDENTIALS: i64 = 13004;
/// `unauthorized`: wrong or expired authorization token, or bad signature.
pub const UNAUTHORIZED: i64 = 13009;
/// `forbidden`: the credentials lack the permission for this request.
pub const FORBIDDEN: i64 = 13021;
/// `scope_exceeded`: the token's scope does not cover this request.
pub const SCOPE_EXCEEDED: i64 = 13403;

/// The codes mapped to [`Error::Auth`]: the credentials (or their scope)
/// are refused, and retrying the same call cannot help.
pub const AUTH_CODES: [i64; 5] = [
    AUTHORIZATION_REQUIRED,
    INVALID_CREDENTIALS,
    UNAUTHORIZED,
    FORBIDDEN,
    SCOPE_EXCEEDED,
];

/// The wait after `too_many_requests` when the error does not say: Deribit
/// refills credits continuously, and one second refills 20 requests' worth
/// at the default non-matching-engine rate.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest `retry_after` taken from an error's data; a larger value is
/// treated as garbage rather than a reason to stall for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The id of our answers to `test_request` heartbeats.
///
/// [`IdGenerator`](crate::protocol::jsonrpc::IdGenerator) starts at 1, so 0
/// never collides with a caller's request, and [`classify`] can recognise the
/// server's answer to our `public/test` and swallow it as a heartbeat instead
/// of reporting a response nobody waits for.
pub const HEARTBEAT_REPLY_ID: u64 = 0;

/// The Deribit error for a JSON-RPC error response.
///
/// - [`TOO_MANY_REQUESTS`] → [`Error::RateLimited`], waiting `data.retry_after`
///   seconds when the data carries such a number (Deribit does not document
///   one; proxies and test servers may add it), else [`DEFAULT_RETRY_AFTER`];
/// - [`AUTH_CODES`] → [`Error::Auth`], whose detail names the message, the
///   code and the data's `reason` when present (13009 carries e.g.
///   `"invalid_token"` there);
/// - anything else → [`Error::Rpc`] with everything as received.
pub fn map_error(code: i64, message: &str, data: Option<Value>) -> Error {
    if code == TOO_MANY_REQUESTS {
        let retry_after = data
            .as_ref()
            .and_then(|d| d.get("retry_after"))
            .and_then(Value::as_f64)
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .filter(|d| *d <= MAX_RETRY_AFTER)
            .unwrap_or(DEFAULT_RETRY_AFTER);
        return Error::RateLimited { retry_after };
    }
    if AUTH_CODES.contains(&code) {
        let reason = data
            .as_ref()
            .and_then(|d| d.get("reason"))
            .and_then(Value::as_str);
        let detail = match reason {
            Some(r) => format!("{message} ({code}): {r}"),
            None => format!("{message} ({code})"),
        };
        return Error::Auth { detail };
    }
    Error::Rpc {
        code,
        message: message.to_owned(),
        data,
    }
}

/// The answer to a `test_request` heartbeat: `public/test`, with id
/// [`HEARTBEAT_REPLY_ID`]. Deribit closes the session when it goes unanswered.
pub fn heartbeat_reply() -> String {
    Request::new(
        RequestId::Number(HEARTBEAT_REPLY_ID),
        "public/test",
        json!({}),
    )
    .to_text()
}

/// What a Deribit text message is (parses it; see [`classify_value`]).
pub fn classify(text: &str) -> Inbound {
    classify_value(serde_json::from_str::<Value>(text).ok().as_ref())
}

/// What a Deribit message is, from its JSON (`None`: not JSON).
///
/// - `{"method":"heartbeat","params":{"type":"test_request"}}` →
///   `Heartbeat { reply: Some(`[`heartbeat_reply`]`()) }`;
/// - `{"method":"heartbeat","params":{"type":"heartbeat"}}` → `Heartbeat { reply: None }`;
/// - the successful answer to our heartbeat reply (id [`HEARTBEAT_REPLY_ID`]) →
///   `Heartbeat { reply: None }`; an *error* answer to it stays a `Response`,
///   so that it is reported;
/// - `{"method":"subscription","params":{"channel":…,"data":…}}` → `Subscription`;
/// - responses (single or batch) → `Response`;
/// - anything else → `Other`.
pub fn classify_value(parsed: Option<&Value>) -> Inbound {
    let Some(value) = parsed else {
        return Inbound::Other;
    };
    if value.get("method").and_then(Value::as_str) == Some("heartbeat")
        && value.get("id").is_none_or(Value::is_null)
    {
        return match value.pointer("/params/type").and_then(Value::as_str) {
            Some("test_request") => Inbound::Heartbeat {
                reply: Some(heartbeat_reply()),
            },
            Some("heartbeat") => Inbound::Heartbeat { reply: None },
            _ => Inbound::Other,
        };
    }
    match classify_jsonrpc(Some(value), "subscription") {
        Inbound::Response(responses)
            if responses.len() == 1
                && responses[0].id == RequestId::Number(HEARTBEAT_REPLY_ID)
                && responses[0].outcome.is_ok() =>
        {
            Inbound::Heartbeat { reply: None }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCategory, Recovery};
    use proptest::prelude::*;

    #[test]
    fn too_many_requests_waits_a_second_by_default() {
        match map_error(10028, "too_many_requests", None) {
            Error::RateLimited { retry_after } => assert_eq!(retry_after, Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_many_requests_honours_a_retry_after_in_the_data() {
        let e = map_error(
            10028,
            "too_many_requests",
            Some(json!({"retry_after": 2.5})),
        );
        assert_eq!(
            e.recovery(),
            Recovery::RetryAfter(Duration::from_millis(2500))
        );
        // Garbage falls back to the default.
        for bad in [
            json!({"retry_after": -1}),
            json!({"retry_after": "soon"}),
            json!({"retry_after": 1e12}),
        ] {
            assert_eq!(
                map_error(10028, "too_many_requests", Some(bad)).recovery(),
                Recovery::RetryAfter(DEFAULT_RETRY_AFTER)
            );
        }
    }

    #[test]
    fn refused_credentials_are_auth_errors_that_stop() {
        for code in AUTH_CODES {
            let e = map_error(code, "nope", None);
            assert_eq!(e.category(), ErrorCategory::Auth, "{code}");
            assert_eq!(e.recovery(), Recovery::Stop, "{code}");
        }
        match map_error(
            13009,
            "unauthorized",
            Some(json!({"reason": "invalid_token"})),
        ) {
            Error::Auth { detail } => {
                assert!(detail.contains("unauthorized") && detail.contains("13009"));
                assert!(detail.contains("invalid_token"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_codes_stay_rpc_errors_with_everything_kept() {
        match map_error(10009, "not_enough_funds", Some(json!({"x": 1}))) {
            Error::Rpc {
                code,
                message,
                data,
            } => {
                assert_eq!(code, 10009);
                assert_eq!(message, "not_enough_funds");
                assert_eq!(data, Some(json!({"x": 1})));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_test_request_is_answered_with_public_test() {
        let hb =
            classify(r#"{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}"#);
        let Inbound::Heartbeat { reply: Some(text) } = hb else {
            panic!("{hb:?}")
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "id": 0, "method": "public/test", "params": {}})
        );
    }

    #[test]
    fn a_plain_heartbeat_needs_no_answer() {
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"heartbeat"}}"#),
            Inbound::Heartbeat { reply: None }
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"other"}}"#),
            Inbound::Other
        );
    }

    #[test]
    fn the_answer_to_our_heartbeat_reply_is_swallowed_but_its_errors_are_not() {
        let ok = r#"{"jsonrpc":"2.0","id":0,"result":{"version":"1.2.26"},"usIn":1,"usOut":2,"usDiff":1,"testnet":true}"#;
        assert_eq!(classify(ok), Inbound::Heartbeat { reply: None });
        let err =
            r#"{"jsonrpc":"2.0","id":0,"error":{"code":10028,"message":"too_many_requests"}}"#;
        assert!(matches!(classify(err), Inbound::Response(_)));
    }

    #[test]
    fn subscription_data_and_responses_are_classified() {
        let sub = r#"{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.BTC-PERPETUAL.raw","data":{"mark_price":42000.5}}}"#;
        assert_eq!(
            classify(sub),
            Inbound::Subscription {
                channel: "ticker.BTC-PERPETUAL.raw".into(),
                data: json!({"mark_price": 42000.5})
            }
        );
        let resp = r#"{"jsonrpc":"2.0","id":7,"result":["ticker.BTC-PERPETUAL.raw"]}"#;
        match classify(resp) {
            Inbound::Response(r) => assert_eq!(r[0].id, RequestId::Number(7)),
            other => panic!("{other:?}"),
        }
        assert_eq!(classify("not json"), Inbound::Other);
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","method":"announcements"}"#),
            Inbound::Other
        );
    }

    proptest! {
        #[test]
        fn classify_never_panics_on_arbitrary_strings(s in ".{0,200}") {
            let _ = classify(&s);
        }

        #[test]
        fn classify_never_panics_on_arbitrary_json(v in crate::protocol::jsonrpc::tests::arb_json()) {
            let _ = classify_value(Some(&v));
            let _ = classify(&v.to_string());
        }

        #[test]
        fn map_error_never_panics(code in any::<i64>(), msg in ".{0,20}", v in crate::protocol::jsonrpc::tests::arb_json()) {
            let _ = map_error(code, &msg, Some(v.clone()));
            let _ = map_error(10028, &msg, Some(v));
        }
    }
}
