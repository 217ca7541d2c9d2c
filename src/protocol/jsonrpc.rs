//! JSON-RPC 2.0 types: ids, requests, notifications, responses and batches.
//!
//! Everything here is pure data and total: every parser takes any
//! [`serde_json::Value`] and answers `None` (or an empty list) for input it does
//! not understand, never a panic. Servers in the wild bend the spec (no
//! `"jsonrpc"` member, `"msg"` instead of `"message"`, an error that is a bare
//! string), so the parsers are tolerant where tolerance cannot confuse a
//! response with something else, and strict where it could (a message without
//! `"result"` or `"error"` is never a response, because a server-to-client
//! request also carries an `"id"`).
//!
//! ```
//! use serde_json::json;
//! use zen_websocket::protocol::jsonrpc::{parse_response, IdGenerator, Request};
//!
//! let ids = IdGenerator::new();
//! let req = Request::new(ids.next(), "public/get_time", json!({}));
//! assert_eq!(
//!     req.to_value(),
//!     json!({"jsonrpc": "2.0", "id": 1, "method": "public/get_time", "params": {}})
//! );
//!
//! let resp = parse_response(&json!({"jsonrpc": "2.0", "id": 1, "result": 1700000000000u64}))
//!     .expect("a response");
//! assert_eq!(resp.id, *req.id());
//! assert_eq!(resp.outcome.unwrap(), json!(1700000000000u64));
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

/// The id of a JSON-RPC request, as sent and as echoed back by the server.
///
/// `Number(1)` and `Str("1")` are different ids (the server echoes the type it
/// received), although both display as `1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestId {
    /// A numeric id (what [`IdGenerator`] makes).
    Number(u64),
    /// A string id.
    Str(String),
}

impl RequestId {
    /// Read an id from JSON: a non-negative integer that fits `u64`, or a string.
    ///
    /// Anything else (`null`, negative or fractional numbers, numbers beyond
    /// `u64`, arrays, objects) is `None`: we never send such ids, so a response
    /// carrying one cannot be ours.
    pub fn from_value(value: &Value) -> Option<RequestId> {
        match value {
            Value::Number(n) => n.as_u64().map(RequestId::Number),
            Value::String(s) => Some(RequestId::Str(s.clone())),
            _ => None,
        }
    }

    /// The id as JSON.
    pub fn to_value(&self) -> Value {
        match self {
            RequestId::Number(n) => Value::from(*n),
            RequestId::Str(s) => Value::String(s.clone()),
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Number(n) => write!(f, "{n}"),
            RequestId::Str(s) => f.write_str(s),
        }
    }
}

impl From<u64> for RequestId {
    fn from(n: u64) -> Self {
        RequestId::Number(n)
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        RequestId::Str(s.to_owned())
    }
}

impl From<String> for RequestId {
    fn from(s: String) -> Self {
        RequestId::Str(s)
    }
}

impl From<RequestId> for Value {
    fn from(id: RequestId) -> Self {
        match id {
            RequestId::Number(n) => Value::from(n),
            RequestId::Str(s) => Value::String(s),
        }
    }
}

impl From<&RequestId> for Value {
    fn from(id: &RequestId) -> Self {
        id.to_value()
    }
}

/// Makes request ids unique per client: 1, 2, 3, …
///
/// Starts at 1 so that 0 stays free for protocol-internal messages (the
/// Deribit dialect answers heartbeats with id 0, see
/// [`crate::adapters::deribit::codes::HEARTBEAT_REPLY_ID`]). Shared by every
/// caller thread of one client; a `u64` does not wrap in any realistic lifetime.
///
/// ```
/// use zen_websocket::protocol::jsonrpc::{IdGenerator, RequestId};
/// let ids = IdGenerator::new();
/// assert_eq!(ids.next(), RequestId::Number(1));
/// assert_eq!(ids.next(), RequestId::Number(2));
/// ```
#[derive(Debug)]
pub struct IdGenerator {
    next: AtomicU64,
}

impl IdGenerator {
    /// A generator whose first id is 1.
    pub fn new() -> Self {
        IdGenerator {
            next: AtomicU64::new(1),
        }
    }

    /// The next id. Never returns the same id twice.
    pub fn next(&self) -> RequestId {
        // Relaxed is enough: uniqueness needs only the atomicity of fetch_add,
        // not ordering with other memory.
        RequestId::Number(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator::new()
    }
}

/// A JSON-RPC request: an id, a method and its params.
///
/// A [`Protocol`](crate::protocol::Protocol) decides how it is written on the
/// wire ([`Protocol::encode_request`](crate::protocol::Protocol::encode_request));
/// [`Request::to_text`] is the JSON-RPC 2.0 encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The id the response will carry.
    pub id: RequestId,
    /// The method name, e.g. `"public/get_time"`.
    pub method: String,
    /// The params; `Value::Null` means "no params" and is left out of the encoding.
    pub params: Value,
}

impl Request {
    /// A request of `method` with `params`, identified by `id`.
    pub fn new(id: RequestId, method: impl Into<String>, params: Value) -> Self {
        Request {
            id,
            method: method.into(),
            params,
        }
    }

    /// The id.
    pub fn id(&self) -> &RequestId {
        &self.id
    }

    /// The JSON-RPC 2.0 object `{"jsonrpc":"2.0","id":…,"method":…,"params":…}`.
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("jsonrpc".into(), Value::from("2.0"));
        obj.insert("id".into(), self.id.to_value());
        obj.insert("method".into(), Value::String(self.method.clone()));
        // The spec lets params be omitted; some servers reject `"params": null`.
        if !self.params.is_null() {
            obj.insert("params".into(), self.params.clone());
        }
        Value::Object(obj)
    }

    /// The JSON-RPC 2.0 encoding as text.
    pub fn to_text(&self) -> String {
        // Display of a Value cannot fail (map keys are always strings).
        self.to_value().to_string()
    }
}

/// A JSON-RPC notification: a method call without an id (nobody answers it).
///
/// Servers use them to push data (`"method":"subscription"`); a client can send
/// one when it needs no answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The method name.
    pub method: String,
    /// The params (`Value::Null` when absent).
    pub params: Value,
}

impl Notification {
    /// A notification of `method` with `params`.
    pub fn new(method: impl Into<String>, params: Value) -> Self {
        Notification {
            method: method.into(),
            params,
        }
    }

    /// Read a notification: an object with a string `"method"` and no `"id"`
    /// (or `"id": null`). `None` for anything else, requests included.
    pub fn parse(value: &Value) -> Option<Notification> {
        let obj = value.as_object()?;
        if !jsonrpc_version_ok(obj) {
            return None;
        }
        if obj.get("id").is_some_and(|id| !id.is_null()) {
            return None;
        }
        let method = obj.get("method")?.as_str()?;
        Some(Notification {
            method: method.to_owned(),
            params: obj.get("params").cloned().unwrap_or(Value::Null),
        })
    }

    /// The JSON-RPC 2.0 object `{"jsonrpc":"2.0","method":…,"params":…}`.
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("jsonrpc".into(), Value::from("2.0"));
        obj.insert("method".into(), Value::String(self.method.clone()));
        if !self.params.is_null() {
            obj.insert("params".into(), self.params.clone());
        }
        Value::Object(obj)
    }

    /// The JSON-RPC 2.0 encoding as text.
    pub fn to_text(&self) -> String {
        self.to_value().to_string()
    }
}

/// The error object of a JSON-RPC response.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The error code (JSON-RPC reserves -32768..=-32000; venues add their own).
    pub code: i64,
    /// The message.
    pub message: String,
    /// The optional `data` member.
    pub data: Option<Value>,
}

impl RpcError {
    /// Invalid JSON was received by the server.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON sent is not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method does not exist or is not available.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal JSON-RPC error.
    pub const INTERNAL_ERROR: i64 = -32603;

    /// An error with `code` and `message` and no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Read an error member. Tolerant, so that a caller gets an error instead
    /// of a timeout when a server bends the format:
    /// - an object: `code` as an integer (0 when absent or not an integer),
    ///   `message` (or `msg`, as some venues write it; otherwise the member's
    ///   JSON text, or empty), and `data`;
    /// - a bare string: code 0 with that message;
    /// - anything else: code 0, the JSON text as message and the value as data.
    pub fn from_value(value: &Value) -> RpcError {
        match value {
            Value::Object(obj) => {
                let code = obj.get("code").and_then(Value::as_i64).unwrap_or(0);
                let message = match obj.get("message").or_else(|| obj.get("msg")) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                RpcError {
                    code,
                    message,
                    data: obj.get("data").cloned(),
                }
            }
            Value::String(s) => RpcError::new(0, s.clone()),
            other => RpcError {
                code: 0,
                message: other.to_string(),
                data: Some(other.clone()),
            },
        }
    }

    /// The error as JSON, `{"code":…,"message":…,"data":…}`.
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("code".into(), Value::from(self.code));
        obj.insert("message".into(), Value::String(self.message.clone()));
        if let Some(data) = &self.data {
            obj.insert("data".into(), data.clone());
        }
        Value::Object(obj)
    }

    /// The crate error for this response: [`crate::Error::Rpc`].
    pub fn into_error(self) -> crate::Error {
        crate::Error::Rpc {
            code: self.code,
            message: self.message,
            data: self.data,
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JSON-RPC error {}: {}", self.code, self.message)
    }
}

impl From<RpcError> for crate::Error {
    fn from(e: RpcError) -> Self {
        e.into_error()
    }
}

/// A JSON-RPC response: the id of the request it answers and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The id of the answered request.
    pub id: RequestId,
    /// The `result` member, or the `error` member.
    pub outcome: Result<Value, RpcError>,
}

impl Response {
    /// A successful response.
    pub fn ok(id: RequestId, result: Value) -> Self {
        Response {
            id,
            outcome: Ok(result),
        }
    }

    /// An error response.
    pub fn err(id: RequestId, error: RpcError) -> Self {
        Response {
            id,
            outcome: Err(error),
        }
    }

    /// True for an error response.
    pub fn is_error(&self) -> bool {
        self.outcome.is_err()
    }

    /// The outcome as the crate's result: the result value or [`crate::Error::Rpc`].
    pub fn into_result(self) -> crate::Result<Value> {
        self.outcome.map_err(RpcError::into_error)
    }

    /// The JSON-RPC 2.0 object (used by tests and testing servers).
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("jsonrpc".into(), Value::from("2.0"));
        obj.insert("id".into(), self.id.to_value());
        match &self.outcome {
            Ok(v) => obj.insert("result".into(), v.clone()),
            Err(e) => obj.insert("error".into(), e.to_value()),
        };
        Value::Object(obj)
    }
}

/// `"jsonrpc"` may be missing (many venues leave it out); when present it must be `"2.0"`.
fn jsonrpc_version_ok(obj: &Map<String, Value>) -> bool {
    match obj.get("jsonrpc") {
        None => true,
        Some(v) => v.as_str() == Some("2.0"),
    }
}

/// Read one response: a JSON object with an `"id"` we could have sent (see
/// [`RequestId::from_value`]) and a `"result"` or a non-null `"error"`.
///
/// `"jsonrpc":"2.0"` is accepted but not required; another version string is
/// refused. When both members are present a non-null `"error"` wins (JSON-RPC
/// 1.0 servers send `"error": null` beside the result). A message with an id
/// but neither member is a server-to-client request, not a response: `None`.
/// Responses with `"id": null` (the server could not read our id) are `None`
/// too: no pending request can be matched to them.
pub fn parse_response(value: &Value) -> Option<Response> {
    let obj = value.as_object()?;
    if !jsonrpc_version_ok(obj) {
        return None;
    }
    let id = RequestId::from_value(obj.get("id")?)?;
    match (obj.get("result"), obj.get("error")) {
        (_, Some(err)) if !err.is_null() => Some(Response::err(id, RpcError::from_value(err))),
        (Some(result), _) => Some(Response::ok(id, result.clone())),
        _ => None,
    }
}

/// Read a batch: a JSON array of responses, in the order received.
///
/// Elements that are not responses are skipped (a batch may mix in anything a
/// server likes); `None` when the value is not an array or holds no response.
pub fn parse_batch(value: &Value) -> Option<Vec<Response>> {
    let items = value.as_array()?;
    let responses: Vec<Response> = items.iter().filter_map(parse_response).collect();
    if responses.is_empty() {
        None
    } else {
        Some(responses)
    }
}

/// Read one response or a batch of them (see [`parse_response`] and [`parse_batch`]).
pub fn parse_responses(value: &Value) -> Option<Vec<Response>> {
    match value {
        Value::Array(_) => parse_batch(value),
        _ => parse_response(value).map(|r| vec![r]),
    }
}

/// Encode requests as one JSON-RPC 2.0 batch (a JSON array).
///
/// The spec calls an empty batch invalid; `encode_batch(&[])` still returns
/// `"[]"` rather than failing, so do not send it.
pub fn encode_batch(requests: &[Request]) -> String {
    Value::Array(requests.iter().map(Request::to_value).collect()).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn ids_start_at_one_and_never_repeat_across_threads() {
        let ids = std::sync::Arc::new(IdGenerator::new());
        assert_eq!(ids.next(), RequestId::Number(1));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..1000).map(|_| ids.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id), "duplicate id");
            }
        }
        assert_eq!(all.len(), 8000);
    }

    #[test]
    fn ids_round_trip_through_json() {
        for id in [
            RequestId::Number(0),
            RequestId::Number(u64::MAX),
            "abc".into(),
        ] {
            assert_eq!(RequestId::from_value(&id.to_value()), Some(id.clone()));
            assert_eq!(RequestId::from_value(&Value::from(id.clone())), Some(id));
        }
        assert_eq!(RequestId::from(7).to_string(), "7");
        assert_eq!(RequestId::from("x-1").to_string(), "x-1");
    }

    #[test]
    fn ids_we_never_send_are_not_ids() {
        for v in [
            json!(null),
            json!(-1),
            json!(1.5),
            json!(1e300),
            json!([1]),
            json!({}),
        ] {
            assert_eq!(RequestId::from_value(&v), None, "{v}");
        }
    }

    #[test]
    fn a_request_encodes_as_json_rpc_two() {
        let r = Request::new(5.into(), "public/test", json!({"a": 1}));
        let v: Value = serde_json::from_str(&r.to_text()).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "id": 5, "method": "public/test", "params": {"a": 1}})
        );
    }

    #[test]
    fn null_params_are_left_out() {
        let r = Request::new("s".into(), "m", Value::Null);
        assert_eq!(
            r.to_value(),
            json!({"jsonrpc": "2.0", "id": "s", "method": "m"})
        );
        let n = Notification::new("m", Value::Null);
        assert_eq!(n.to_value(), json!({"jsonrpc": "2.0", "method": "m"}));
    }

    #[test]
    fn a_result_response_parses_with_or_without_the_version() {
        let with = parse_response(&json!({"jsonrpc": "2.0", "id": 3, "result": {"x": 1}}));
        let without = parse_response(&json!({"id": 3, "result": {"x": 1}}));
        assert_eq!(with, Some(Response::ok(3.into(), json!({"x": 1}))));
        assert_eq!(with, without);
    }

    #[test]
    fn a_null_result_is_still_a_result() {
        let r = parse_response(&json!({"id": 1, "result": null})).unwrap();
        assert_eq!(r.outcome, Ok(Value::Null));
    }

    #[test]
    fn an_error_response_becomes_an_rpc_error() {
        let r = parse_response(&json!({
            "jsonrpc": "2.0", "id": 9,
            "error": {"code": 10028, "message": "too_many_requests", "data": {"x": 1}}
        }))
        .unwrap();
        let e = r.outcome.clone().unwrap_err();
        assert_eq!(e.code, 10028);
        assert_eq!(e.message, "too_many_requests");
        assert_eq!(e.data, Some(json!({"x": 1})));
        match r.into_result() {
            Err(crate::Error::Rpc { code: 10028, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_non_null_error_wins_over_a_result_and_a_null_error_loses() {
        let r = parse_response(&json!({"id": 1, "result": 5, "error": {"code": 1}})).unwrap();
        assert!(r.is_error());
        let r = parse_response(&json!({"id": 1, "result": 5, "error": null})).unwrap();
        assert_eq!(r.outcome, Ok(json!(5)));
    }

    #[test]
    fn misshapen_errors_still_fail_the_request() {
        let r = parse_response(&json!({"id": 1, "error": "boom"})).unwrap();
        assert_eq!(r.outcome, Err(RpcError::new(0, "boom")));
        let r = parse_response(&json!({"id": 1, "error": {"code": 2, "msg": "Invalid request"}}))
            .unwrap();
        assert_eq!(r.outcome, Err(RpcError::new(2, "Invalid request")));
        let r = parse_response(&json!({"id": 1, "error": {"code": "x", "message": 5}})).unwrap();
        assert_eq!(r.outcome, Err(RpcError::new(0, "5")));
        let r = parse_response(&json!({"id": 1, "error": 42})).unwrap();
        assert_eq!(r.outcome.unwrap_err().data, Some(json!(42)));
    }

    #[test]
    fn server_requests_notifications_and_junk_are_not_responses() {
        for v in [
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
            json!({"jsonrpc": "2.0", "method": "subscription", "params": {}}),
            json!({"jsonrpc": "1.0", "id": 1, "result": 1}),
            json!({"jsonrpc": 2, "id": 1, "result": 1}),
            json!({"id": null, "error": {"code": -32700, "message": "parse error"}}),
            json!({"id": {"a": 1}, "result": 1}),
            json!({"result": 1}),
            json!([1, 2]),
            json!("text"),
            json!(null),
        ] {
            assert_eq!(parse_response(&v), None, "{v}");
        }
    }

    #[test]
    fn a_batch_keeps_responses_in_order_and_skips_the_rest() {
        let v = json!([
            {"jsonrpc": "2.0", "id": 2, "result": "b"},
            "junk",
            {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "no"}},
        ]);
        let rs = parse_batch(&v).unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0], Response::ok(2.into(), json!("b")));
        assert_eq!(rs[1].id, RequestId::Number(1));
        assert!(rs[1].is_error());
        assert_eq!(parse_batch(&json!([])), None);
        assert_eq!(parse_batch(&json!(["junk"])), None);
        assert_eq!(
            parse_responses(&json!({"id": 1, "result": 1}))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_batch_encodes_as_an_array_of_requests() {
        let reqs = [
            Request::new(1.into(), "a", json!({})),
            Request::new(2.into(), "b", json!([1])),
        ];
        let v: Value = serde_json::from_str(&encode_batch(&reqs)).unwrap();
        assert_eq!(v, json!([reqs[0].to_value(), reqs[1].to_value()]));
        assert_eq!(encode_batch(&[]), "[]");
    }

    #[test]
    fn notifications_parse_and_requests_do_not() {
        let n = Notification::parse(&json!({"method": "subscription", "params": {"channel": "c"}}))
            .unwrap();
        assert_eq!(n.method, "subscription");
        assert_eq!(n.params, json!({"channel": "c"}));
        assert!(Notification::parse(&json!({"method": "m", "id": 1})).is_none());
        assert!(Notification::parse(&json!({"method": 5})).is_none());
        assert_eq!(Notification::parse(&n.to_value()), Some(n));
    }

    #[test]
    fn responses_round_trip_through_their_encoding() {
        let ok = Response::ok("a".into(), json!([1, 2]));
        let mut e = RpcError::new(-32000, "bad");
        e.data = Some(json!({"why": "x"}));
        let err = Response::err(7.into(), e);
        assert_eq!(parse_response(&ok.to_value()), Some(ok));
        assert_eq!(parse_response(&err.to_value()), Some(err));
    }

    /// Arbitrary JSON, nested a few levels, with the keys JSON-RPC parsers look at.
    pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("jsonrpc".to_string()),
            Just("id".to_string()),
            Just("result".to_string()),
            Just("error".to_string()),
            Just("code".to_string()),
            Just("message".to_string()),
            Just("method".to_string()),
            Just("params".to_string()),
            Just("channel".to_string()),
            Just("data".to_string()),
            Just("type".to_string()),
            "[a-z]{0,6}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            Just(Value::from("2.0")),
            Just(Value::from("subscription")),
            Just(Value::from("heartbeat")),
            Just(Value::from("test_request")),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_json(v in arb_json()) {
            let _ = parse_response(&v);
            let _ = parse_batch(&v);
            let _ = parse_responses(&v);
            let _ = Notification::parse(&v);
            let _ = RequestId::from_value(&v);
            let _ = RpcError::from_value(&v);
        }

        #[test]
        fn parsed_responses_survive_a_round_trip(v in arb_json()) {
            if let Some(r) = parse_response(&v) {
                prop_assert_eq!(parse_response(&r.to_value()), Some(r));
            }
        }
    }
}
