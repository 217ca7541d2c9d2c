//! The JSONL entry codec and the recording reader, on arbitrary bytes.
//!
//! - `decode` of the input as one line never panics, and whatever it accepts
//!   survives `encode` → `decode` (time stamps to the microsecond, as written);
//! - a `Recording` over a file made of the input never panics, and agrees line
//!   by line with `decode` (same entries, bad lines at the same numbers,
//!   `truncated` only on a last line without its newline).
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zen_websocket::recorder::{
    decode, encode, format_timestamp, parse_timestamp, Entry, EntryKind, Recording, Redactor,
};

/// Files bigger than this are not worth writing on every run: the line logic
/// is the same for 64 KiB as for 64 MiB.
const MAX_FILE: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        check_line(line);
    }
    if data.len() <= MAX_FILE {
        check_recording(data);
    }
});

fn check_line(line: &str) {
    let Ok(entry) = decode(line) else {
        return;
    };
    let none = Redactor::none();
    let encoded = encode(&entry, &none);
    assert!(!encoded.contains('\n'), "a newline in {encoded:?}");
    let again = decode(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded entry does not decode: {e}\n{encoded}"));
    let mut expected = entry.clone();
    // The file keeps microseconds, and so does the re-encoded line.
    expected.ts = parse_timestamp(&format_timestamp(entry.ts)).expect("a formatted time stamp");
    if let EntryKind::Connected { url } = &mut expected.kind {
        // `redact_url` rewrites user info even for `Redactor::none()`.
        *url = none.redact_url(url).into_owned();
    }
    assert_eq!(
        again, expected,
        "round trip of {line:?} through {encoded:?}"
    );
}

fn check_recording(data: &[u8]) {
    let path = scratch_file();
    fs::write(path, data).expect("write the scratch file");
    let items: Vec<_> = Recording::open(path)
        .expect("open the scratch file")
        .collect();

    // What the recording must report, computed line by line here.
    let mut expected: Vec<Result<Entry, (usize, bool)>> = Vec::new();
    let mut lines = data.split(|b| *b == b'\n').peekable();
    let mut number = 0;
    while let Some(raw) = lines.next() {
        let is_last = lines.peek().is_none();
        if is_last && raw.is_empty() {
            break; // the file ended with a newline
        }
        number += 1;
        let bytes = raw.trim_ascii();
        if bytes.is_empty() {
            continue;
        }
        let decoded = std::str::from_utf8(bytes).ok().and_then(|s| decode(s).ok());
        expected.push(decoded.ok_or((number, is_last)));
    }
    let got: Vec<_> = items
        .into_iter()
        .map(|item| item.map_err(|bad| (bad.line, bad.truncated)))
        .collect();
    assert_eq!(got, expected);
}

/// One file per fuzzing process, rewritten by every run. In `/dev/shm` when
/// there is one: this target writes it tens of thousands of times a second.
fn scratch_file() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("zen-fuzz-jsonl-{}.jsonl", std::process::id()))
    })
}
