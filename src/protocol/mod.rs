//! Application protocols over the WebSocket: JSON-RPC 2.0, request
//! correlation, subscription tracking, and the [`Protocol`] trait through
//! which a venue's dialect plugs in.
//!
//! Nothing in this module touches a socket. The connection thread drives it:
//! it asks the [`Protocol`] how to write subscribe messages and how to read
//! each inbound text, hands responses to the
//! [`RequestCorrelator`](correlator::RequestCorrelator), and keeps the
//! [`SubscriptionTracker`](subscriptions::SubscriptionTracker) up to date.

pub mod correlator;
pub mod jsonrpc;
pub mod subscriptions;

use serde_json::{Map, Value};

use self::jsonrpc::{Notification, Request, RequestId};

/// What an inbound text message is, as far as the client is concerned.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Inbound {
    /// One response, or a batch of them, for the request correlator.
    Response(Vec<jsonrpc::Response>),
    /// Data pushed on a subscribed channel.
    Subscription {
        /// The channel, as the venue names it.
        channel: String,
        /// The payload.
        data: Value,
    },
    /// A platform-level heartbeat (not a WebSocket ping). When `reply` is
    /// given, the connection thread sends it at once (Deribit's `test_request`
    /// must be answered with `public/test` or the venue closes the session).
    Heartbeat {
        /// The text to answer with, if the heartbeat asks for an answer.
        reply: Option<String>,
    },
    /// Anything else: delivered to the user as a plain message.
    Other,
    /// A sequenced channel skipped at least one update (Deribit's `book.*`:
    /// a change whose `prev_change_id` is not the last `change_id`). The
    /// message itself is not delivered; the connection thread reports
    /// [`Event::SequenceGap`](crate::Event::SequenceGap) and resubscribes
    /// `channel` alone (unsubscribe, then subscribe) for a fresh snapshot. A
    /// protocol reports a gap once per resubscribe: until the snapshot comes,
    /// it answers [`Discard`](Inbound::Discard) for that channel's changes.
    SequenceGap {
        /// The channel.
        channel: String,
        /// The sequence number the message should have followed (the last one seen).
        expected: u64,
        /// The sequence number it followed instead.
        received: u64,
    },
    /// Consumed by the protocol: nothing is delivered (e.g. a book change that
    /// builds on a missed one, while the fresh snapshot is on its way).
    Discard,
}

/// What [`Protocol::on_connect`] may do on the fresh connection. The
/// connection thread implements it; calls block until answered.
pub trait Session {
    /// Send a request and wait for its result (or its error).
    fn request(&mut self, method: &str, params: Value) -> crate::Result<Value>;
    /// Send a text message as is.
    fn send_text(&mut self, text: &str) -> crate::Result<()>;
}

/// A venue's dialect: how subscriptions are written and how inbound messages read.
///
/// [`JsonRpc`] is the default. A venue that does not speak JSON-RPC 2.0
/// overrides [`encode_request`](Protocol::encode_request) and
/// [`classify`](Protocol::classify). Binance, for instance, subscribes with
/// `{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}` (no `"jsonrpc"`),
/// answers `{"result":null,"id":1}` and pushes raw events:
///
/// ```
/// use serde_json::{json, Value};
/// use zen_websocket::protocol::jsonrpc::{parse_response, Request, RequestId};
/// use zen_websocket::protocol::{Inbound, Protocol};
///
/// #[derive(Debug)]
/// struct Binance;
///
/// impl Protocol for Binance {
///     fn subscribe_request(&self, channels: &[String], id: &RequestId) -> Request {
///         Request::new(id.clone(), "SUBSCRIBE", json!(channels))
///     }
///     fn unsubscribe_request(&self, channels: &[String], id: &RequestId) -> Request {
///         Request::new(id.clone(), "UNSUBSCRIBE", json!(channels))
///     }
///     fn confirmed_channels(&self, _result: &Value) -> Option<Vec<String>> {
///         None // the result is `null`: every requested stream was accepted
///     }
///     fn encode_request(&self, req: &Request) -> String {
///         json!({"method": req.method, "params": req.params, "id": req.id.to_value()})
///             .to_string()
///     }
///     fn classify(&self, _text: &str, parsed: Option<&Value>) -> Inbound {
///         let Some(v) = parsed else { return Inbound::Other };
///         // `parse_response` accepts a missing "jsonrpc" and Binance's "msg".
///         if let Some(r) = parse_response(v) {
///             return Inbound::Response(vec![r]);
///         }
///         // Combined stream: {"stream":"btcusdt@trade","data":{…}}
///         if let (Some(stream), Some(data)) = (v["stream"].as_str(), v.get("data")) {
///             return Inbound::Subscription { channel: stream.into(), data: data.clone() };
///         }
///         // Raw stream: {"e":"trade","s":"BTCUSDT",…}
///         if let (Some(event), Some(symbol)) = (v["e"].as_str(), v["s"].as_str()) {
///             let channel = format!("{}@{event}", symbol.to_lowercase());
///             return Inbound::Subscription { channel, data: v.clone() };
///         }
///         Inbound::Other
///     }
/// }
///
/// let p = Binance;
/// let req = p.subscribe_request(&["btcusdt@trade".into()], &RequestId::Number(1));
/// assert_eq!(p.encode_request(&req), r#"{"id":1,"method":"SUBSCRIBE","params":["btcusdt@trade"]}"#);
///
/// let classify = |text: &str| p.classify(text, serde_json::from_str(text).ok().as_ref());
/// assert!(matches!(classify(r#"{"result":null,"id":1}"#),
///     Inbound::Response(r) if r[0].id == RequestId::Number(1) && r[0].outcome.is_ok()));
/// assert!(matches!(classify(r#"{"error":{"code":2,"msg":"Invalid request"},"id":2}"#),
///     Inbound::Response(r) if r[0].outcome.as_ref().unwrap_err().message == "Invalid request"));
/// assert!(matches!(classify(r#"{"e":"trade","s":"BTCUSDT","p":"42000.1"}"#),
///     Inbound::Subscription { channel, .. } if channel == "btcusdt@trade"));
/// assert!(matches!(classify(r#"{"stream":"ethusdt@depth","data":{"b":[]}}"#),
///     Inbound::Subscription { channel, data } if channel == "ethusdt@depth" && data == json!({"b": []})));
/// assert_eq!(classify("not json"), Inbound::Other);
/// ```
pub trait Protocol: Send + Sync + std::fmt::Debug + 'static {
    /// The request that subscribes to `channels`, identified by `id`.
    fn subscribe_request(&self, channels: &[String], id: &RequestId) -> Request;

    /// The request that unsubscribes from `channels`, identified by `id`.
    fn unsubscribe_request(&self, channels: &[String], id: &RequestId) -> Request;

    /// The channels a subscribe (or unsubscribe) confirmation lists in its
    /// result, or `None` when it lists none (then the requested ones count).
    fn confirmed_channels(&self, result: &Value) -> Option<Vec<String>>;

    /// What an inbound text is. `parsed` is the text parsed as JSON, or `None`
    /// when it is not JSON (the connection thread parses once, for everyone).
    /// Must never panic, whatever the input.
    fn classify(&self, text: &str, parsed: Option<&Value>) -> Inbound;

    /// How a request is written on the wire. Defaults to JSON-RPC 2.0
    /// ([`Request::to_text`]).
    fn encode_request(&self, req: &Request) -> String {
        req.to_text()
    }

    /// Runs on every (re)connect, after the handshake and before subscriptions
    /// are restored: authenticate, set up platform heartbeats. An error fails
    /// the connection attempt. Defaults to doing nothing.
    fn on_connect(&self, session: &mut dyn Session) -> crate::Result<()> {
        let _ = session;
        Ok(())
    }
}

/// The default dialect: plain JSON-RPC 2.0.
///
/// Subscribes with `{"method":"subscribe","params":{"channels":[…]}}`, reads
/// responses by id, and reads notifications
/// `{"method":"subscription","params":{"channel":…,"data":…}}` as
/// subscription data. The method and parameter names can be changed:
///
/// ```
/// use serde_json::json;
/// use zen_websocket::protocol::jsonrpc::RequestId;
/// use zen_websocket::protocol::{Inbound, JsonRpc, Protocol};
///
/// let p = JsonRpc::new()
///     .subscribe_method("public/subscribe")
///     .unsubscribe_method("public/unsubscribe");
/// let req = p.subscribe_request(&["trades.BTC".into()], &RequestId::Number(3));
/// assert_eq!(req.to_value(), json!({
///     "jsonrpc": "2.0", "id": 3, "method": "public/subscribe",
///     "params": {"channels": ["trades.BTC"]}
/// }));
///
/// let note = json!({"jsonrpc": "2.0", "method": "subscription",
///                   "params": {"channel": "trades.BTC", "data": [1, 2]}});
/// assert_eq!(
///     p.classify(&note.to_string(), Some(&note)),
///     Inbound::Subscription { channel: "trades.BTC".into(), data: json!([1, 2]) }
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonRpc {
    subscribe_method: String,
    unsubscribe_method: String,
    channels_param: String,
    notification_method: String,
}

impl Default for JsonRpc {
    fn default() -> Self {
        JsonRpc {
            subscribe_method: "subscribe".into(),
            unsubscribe_method: "unsubscribe".into(),
            channels_param: "channels".into(),
            notification_method: "subscription".into(),
        }
    }
}

impl JsonRpc {
    /// The default dialect (see [`JsonRpc`]).
    pub fn new() -> Self {
        JsonRpc::default()
    }

    /// The subscribe method. Defaults to `"subscribe"`.
    pub fn subscribe_method(mut self, method: impl Into<String>) -> Self {
        self.subscribe_method = method.into();
        self
    }

    /// The unsubscribe method. Defaults to `"unsubscribe"`.
    pub fn unsubscribe_method(mut self, method: impl Into<String>) -> Self {
        self.unsubscribe_method = method.into();
        self
    }

    /// The name of the params member holding the channel list. Defaults to `"channels"`.
    pub fn channels_param(mut self, name: impl Into<String>) -> Self {
        self.channels_param = name.into();
        self
    }

    /// The method of notifications carrying subscription data. Defaults to `"subscription"`.
    pub fn notification_method(mut self, method: impl Into<String>) -> Self {
        self.notification_method = method.into();
        self
    }

    fn channel_request(&self, method: &str, channels: &[String], id: &RequestId) -> Request {
        let mut params = Map::new();
        params.insert(
            self.channels_param.clone(),
            Value::Array(channels.iter().cloned().map(Value::String).collect()),
        );
        Request::new(id.clone(), method, Value::Object(params))
    }
}

/// Classify JSON by the JSON-RPC rules: a response or a batch of them, or a
/// notification of `notification_method` whose params hold a string
/// `channel` (and `data`, `null` when missing); anything else is `Other`.
pub(crate) fn classify_jsonrpc(parsed: Option<&Value>, notification_method: &str) -> Inbound {
    let Some(value) = parsed else {
        return Inbound::Other;
    };
    if let Some(responses) = jsonrpc::parse_responses(value) {
        return Inbound::Response(responses);
    }
    if let Some(n) = Notification::parse(value) {
        if n.method == notification_method {
            if let Some(channel) = n.params.get("channel").and_then(Value::as_str) {
                return Inbound::Subscription {
                    channel: channel.to_owned(),
                    data: n.params.get("data").cloned().unwrap_or(Value::Null),
                };
            }
        }
    }
    Inbound::Other
}

/// Read a confirmation result that is a list of channel names.
pub(crate) fn channel_list(result: &Value) -> Option<Vec<String>> {
    result
        .as_array()?
        .iter()
        .map(|c| c.as_str().map(str::to_owned))
        .collect()
}

impl Protocol for JsonRpc {
    fn subscribe_request(&self, channels: &[String], id: &RequestId) -> Request {
        self.channel_request(&self.subscribe_method, channels, id)
    }

    fn unsubscribe_request(&self, channels: &[String], id: &RequestId) -> Request {
        self.channel_request(&self.unsubscribe_method, channels, id)
    }

    /// A result that is an array of strings lists the channels; anything else lists none.
    fn confirmed_channels(&self, result: &Value) -> Option<Vec<String>> {
        channel_list(result)
    }

    fn classify(&self, _text: &str, parsed: Option<&Value>) -> Inbound {
        classify_jsonrpc(parsed, &self.notification_method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn classify(p: &JsonRpc, v: Value) -> Inbound {
        p.classify(&v.to_string(), Some(&v))
    }

    #[test]
    fn the_default_dialect_subscribes_with_a_channel_list() {
        let p = JsonRpc::new();
        let req = p.subscribe_request(&["a".into(), "b".into()], &RequestId::Number(1));
        assert_eq!(
            serde_json::from_str::<Value>(&p.encode_request(&req)).unwrap(),
            json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channels": ["a", "b"]}})
        );
        let req = p.unsubscribe_request(&["a".into()], &RequestId::Number(2));
        assert_eq!(req.method, "unsubscribe");
    }

    #[test]
    fn setters_rename_methods_and_params() {
        let p = JsonRpc::new()
            .channels_param("topics")
            .notification_method("push");
        let req = p.subscribe_request(&["t".into()], &RequestId::Number(1));
        assert_eq!(req.params, json!({"topics": ["t"]}));
        assert_eq!(
            classify(
                &p,
                json!({"method": "push", "params": {"channel": "t", "data": 1}})
            ),
            Inbound::Subscription {
                channel: "t".into(),
                data: json!(1)
            }
        );
        assert_eq!(
            classify(
                &p,
                json!({"method": "subscription", "params": {"channel": "t"}})
            ),
            Inbound::Other
        );
    }

    #[test]
    fn responses_and_batches_are_classified_as_responses() {
        let p = JsonRpc::new();
        match classify(&p, json!({"jsonrpc": "2.0", "id": 4, "result": ["a"]})) {
            Inbound::Response(r) => {
                assert_eq!(r.len(), 1);
                assert_eq!(
                    p.confirmed_channels(r[0].outcome.as_ref().unwrap()),
                    Some(vec!["a".into()])
                );
            }
            other => panic!("{other:?}"),
        }
        match classify(&p, json!([{"id": 1, "result": 1}, {"id": 2, "result": 2}])) {
            Inbound::Response(r) => assert_eq!(r.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_notification_without_data_carries_null() {
        let p = JsonRpc::new();
        assert_eq!(
            classify(
                &p,
                json!({"method": "subscription", "params": {"channel": "c"}})
            ),
            Inbound::Subscription {
                channel: "c".into(),
                data: Value::Null
            }
        );
    }

    #[test]
    fn everything_else_is_other() {
        let p = JsonRpc::new();
        for v in [
            json!({"method": "subscription", "params": {"channel": 5}}),
            json!({"method": "subscription", "params": "x"}),
            json!({"method": "subscription", "id": 1, "params": {"channel": "c"}}),
            json!({"method": "heartbeat"}),
            json!(42),
        ] {
            assert_eq!(classify(&p, v.clone()), Inbound::Other, "{v}");
        }
        assert_eq!(p.classify("plain text", None), Inbound::Other);
    }

    #[test]
    fn only_a_list_of_strings_confirms_channels() {
        let p = JsonRpc::new();
        assert_eq!(
            p.confirmed_channels(&json!(["a", "b"])),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(p.confirmed_channels(&json!(["a", 1])), None);
        assert_eq!(p.confirmed_channels(&json!(null)), None);
        assert_eq!(p.confirmed_channels(&json!({"channels": ["a"]})), None);
    }

    #[test]
    fn on_connect_does_nothing_by_default() {
        struct NoSession;
        impl Session for NoSession {
            fn request(&mut self, _: &str, _: Value) -> crate::Result<Value> {
                Err(crate::Error::NotConnected)
            }
            fn send_text(&mut self, _: &str) -> crate::Result<()> {
                Err(crate::Error::NotConnected)
            }
        }
        assert!(JsonRpc::new().on_connect(&mut NoSession).is_ok());
    }

    #[test]
    fn the_trait_is_usable_as_a_trait_object() {
        let p: Box<dyn Protocol> = Box::new(JsonRpc::new());
        let req = p.subscribe_request(&[], &RequestId::Number(1));
        assert_eq!(req.params, json!({"channels": []}));
    }

    proptest! {
        #[test]
        fn classify_never_panics_on_arbitrary_json(v in jsonrpc::tests::arb_json()) {
            let p = JsonRpc::new();
            let _ = p.classify(&v.to_string(), Some(&v));
            let _ = p.confirmed_channels(&v);
        }

        #[test]
        fn classify_never_panics_on_arbitrary_strings(s in ".{0,200}") {
            let p = JsonRpc::new();
            let parsed: Option<Value> = serde_json::from_str(&s).ok();
            let _ = p.classify(&s, parsed.as_ref());
        }
    }
}
