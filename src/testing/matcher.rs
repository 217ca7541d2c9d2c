//! What a test expects a client to have sent: [`Matcher`].

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::{ConfigError, Message, Result};

/// A test of one received message, used by
/// [`MockServer::assert_message_sent`](super::MockServer::assert_message_sent).
///
/// Build one from a `&str` or `String` (exact text), a [`serde_json::Value`]
/// (JSON subset), a [`regex::Regex`], or a closure with [`Matcher::predicate`].
///
/// ```
/// use serde_json::json;
/// use zen_websocket::testing::Matcher;
/// use zen_websocket::Message;
///
/// let msg = Message::from(r#"{"op":"subscribe","args":["trades"],"id":7}"#);
/// assert!(Matcher::json(json!({"op": "subscribe"})).matches(&msg));
/// assert!(Matcher::regex(r#""id":\d+"#)?.matches(&msg));
/// assert!(Matcher::predicate(|m| m.len() > 10).matches(&msg));
/// assert!(!Matcher::from("subscribe").matches(&msg));
/// # Ok::<(), zen_websocket::Error>(())
/// ```
#[derive(Clone)]
pub enum Matcher {
    /// A text message whose text is exactly this string. Never matches binary messages.
    Exact(String),
    /// A text message in which the regex finds a match (anchor it with `^…$` for a
    /// whole-message match). Never matches binary messages.
    Regex(regex::Regex),
    /// A text message holding JSON that contains this value as a subset: every key
    /// of an expected object is present with a matching value, recursively for
    /// nested objects; arrays and scalars must be equal (`1` and `1.0` differ).
    /// Never matches binary messages or text that is not JSON.
    JsonSubset(Value),
    /// Any message for which the function returns true.
    Predicate(Arc<dyn Fn(&Message) -> bool + Send + Sync>),
}

impl Matcher {
    /// A [`Matcher::Regex`] compiled from `pattern`.
    ///
    /// Fails with [`crate::Error::Config`] (field `"regex"`) if the pattern is invalid.
    pub fn regex(pattern: &str) -> Result<Matcher> {
        regex::Regex::new(pattern)
            .map(Matcher::Regex)
            .map_err(|e| ConfigError::new("regex", e.to_string()).into())
    }

    /// A [`Matcher::Predicate`] calling `f`.
    pub fn predicate(f: impl Fn(&Message) -> bool + Send + Sync + 'static) -> Matcher {
        Matcher::Predicate(Arc::new(f))
    }

    /// A [`Matcher::JsonSubset`] expecting `value`.
    pub fn json(value: Value) -> Matcher {
        Matcher::JsonSubset(value)
    }

    /// True when `message` passes this test.
    pub fn matches(&self, message: &Message) -> bool {
        match self {
            Matcher::Exact(expected) => message.as_text() == Some(expected.as_str()),
            Matcher::Regex(re) => message.as_text().is_some_and(|t| re.is_match(t)),
            Matcher::JsonSubset(expected) => message
                .json()
                .is_some_and(|actual| json_contains(&actual, expected)),
            Matcher::Predicate(f) => f(message),
        }
    }
}

/// True when `actual` contains `expected`: objects by subset of keys (recursively),
/// everything else by equality.
pub(crate) fn json_contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => expected.iter().all(|(key, want)| {
            actual
                .get(key)
                .is_some_and(|have| json_contains(have, want))
        }),
        _ => actual == expected,
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Exact(s) => f.debug_tuple("Exact").field(s).finish(),
            Matcher::Regex(re) => f.debug_tuple("Regex").field(&re.as_str()).finish(),
            Matcher::JsonSubset(v) => write!(f, "JsonSubset({v})"),
            Matcher::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

impl From<&str> for Matcher {
    fn from(s: &str) -> Self {
        Matcher::Exact(s.to_owned())
    }
}

impl From<String> for Matcher {
    fn from(s: String) -> Self {
        Matcher::Exact(s)
    }
}

impl From<&String> for Matcher {
    fn from(s: &String) -> Self {
        Matcher::Exact(s.clone())
    }
}

impl From<Value> for Matcher {
    fn from(v: Value) -> Self {
        Matcher::JsonSubset(v)
    }
}

impl From<regex::Regex> for Matcher {
    fn from(re: regex::Regex) -> Self {
        Matcher::Regex(re)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exact_matches_only_the_same_text() {
        let m = Matcher::from("hi");
        assert!(m.matches(&Message::from("hi")));
        assert!(!m.matches(&Message::from("hi ")));
        assert!(!m.matches(&Message::from(b"hi".to_vec())));
    }

    #[test]
    fn json_subset_ignores_extra_keys_but_not_differing_values() {
        let actual = json!({"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": "x"});
        assert!(json_contains(&actual, &json!({})));
        assert!(json_contains(&actual, &json!({"a": 1})));
        assert!(json_contains(&actual, &json!({"b": {"c": 2}})));
        assert!(json_contains(&actual, &json!({"b": {"d": [1, 2]}})));
        assert!(!json_contains(&actual, &json!({"b": {"d": [1]}})));
        assert!(!json_contains(&actual, &json!({"a": 2})));
        assert!(!json_contains(&actual, &json!({"z": null})));
        assert!(!json_contains(&actual, &json!({"a": {"x": 1}})));
    }

    #[test]
    fn json_subset_compares_non_objects_by_equality() {
        assert!(json_contains(&json!([1, 2]), &json!([1, 2])));
        assert!(!json_contains(&json!([1, 2, 3]), &json!([1, 2])));
        assert!(json_contains(&json!("s"), &json!("s")));
        assert!(!json_contains(&json!(1), &json!(1.0)));
    }

    #[test]
    fn json_matcher_never_matches_binary_or_non_json() {
        let m = Matcher::json(json!({"a": 1}));
        assert!(m.matches(&Message::from(r#"{"a":1,"b":2}"#)));
        assert!(!m.matches(&Message::from("not json")));
        assert!(!m.matches(&Message::from(br#"{"a":1}"#.to_vec())));
    }

    #[test]
    fn regex_matches_anywhere_and_invalid_patterns_are_config_errors() {
        let m = Matcher::regex(r"\d{3}").unwrap();
        assert!(m.matches(&Message::from("id 123 ok")));
        assert!(!m.matches(&Message::from("id 12")));
        let err = Matcher::regex("(").unwrap_err();
        assert!(
            matches!(err, crate::Error::Config(ref c) if c.field == "regex"),
            "{err}"
        );
    }

    #[test]
    fn predicates_see_binary_messages_too() {
        let m = Matcher::predicate(|m| !m.is_text() && m.len() == 3);
        assert!(m.matches(&Message::from(vec![1u8, 2, 3])));
        assert!(!m.matches(&Message::from("abc")));
        assert_eq!(format!("{m:?}"), "Predicate(..)");
    }
}
