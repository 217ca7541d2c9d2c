//! URL and header validation, on arbitrary text.
//!
//! The input's first line is the URL; every further line is a header, split
//! at its first `:` (a line without one is a name with an empty value).
//!
//! - `Endpoint::parse` never panics; what it accepts has a host, a port from
//!   1 to 65535 and a path starting with `/`, and its canonical form
//!   (`Endpoint::url`) parses back to the same endpoint;
//! - `Config::builder(url).header(..).build()` never panics; an error names the
//!   `url` or a `header` and never echoes a header value; a valid config
//!   rebuilds from `to_builder()`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zen_websocket::{Config, Endpoint};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let url = lines.next().unwrap_or_default();
    let headers: Vec<(&str, &str)> = lines
        .map(|line| line.split_once(':').unwrap_or((line, "")))
        .collect();

    let endpoint = Endpoint::parse(url);
    match &endpoint {
        Ok(e) => {
            assert!(!e.host.is_empty(), "{url:?} -> {e:?}");
            assert_ne!(e.port, 0, "{url:?} -> {e:?}");
            assert!(e.path_and_query.starts_with('/'), "{url:?} -> {e:?}");
            let canonical = e.url();
            assert_eq!(
                Endpoint::parse(&canonical).as_ref(),
                Ok(e),
                "{url:?} -> {canonical:?}"
            );
        }
        Err(err) => assert_eq!(err.field, "url"),
    }

    let mut builder = Config::builder(url);
    for (name, value) in &headers {
        builder = builder.header(*name, *value);
    }
    match builder.build() {
        Ok(config) => {
            assert_eq!(Some(config.endpoint()), endpoint.as_ref().ok());
            let rebuilt = config.to_builder().build();
            assert!(rebuilt.is_ok(), "{url:?}: {rebuilt:?}");
        }
        Err(err) => {
            let expected = if endpoint.is_ok() { "header" } else { "url" };
            assert_eq!(err.field, expected, "{err}");
            if err.field == "header" {
                assert_no_value_shown(&err.rule, &headers);
            }
        }
    }
});

/// The rule names the header but must not show its value: it may be a
/// credential. Checked exactly: the rule is one of the two messages of
/// `ConfigBuilder::build`, about one of the headers, and nothing else (update
/// these when the messages change).
fn assert_no_value_shown(rule: &str, headers: &[(&str, &str)]) {
    let known = headers.iter().any(|(name, _)| {
        rule == format!("`{name}` is not a valid HTTP header name")
            || rule
                == format!(
                    "the value of `{name}` is not a valid HTTP header value \
                     (control characters or non-ASCII)"
                )
    });
    assert!(
        known,
        "an unexpected header rule (does it show a value?): {rule}"
    );
}
