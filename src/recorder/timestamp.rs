//! RFC 3339 UTC time stamps with microseconds, to and from [`SystemTime`].
//!
//! We write our own instead of pulling in a date crate: the recorder needs one
//! fixed output shape (`2026-12-02T00:31:07.123456Z`) and a lenient reader, and
//! both are a few lines around the civil-from-days algorithm
//! (Howard Hinnant, "chrono-Compatible Low-Level Date Algorithms").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::entry::DecodeError;

/// Seconds from the Unix epoch to 0000-01-01T00:00:00Z.
const MIN_SECS: i64 = -62_167_219_200;
/// Seconds from the Unix epoch to 9999-12-31T23:59:59Z.
const MAX_SECS: i64 = 253_402_300_799;
const MICROS: i128 = 1_000_000;

/// Formats `t` as RFC 3339 in UTC with exactly six fractional digits, e.g.
/// `2026-12-02T00:31:07.123456Z`.
///
/// Sub-microsecond precision is truncated toward the past. Instants outside
/// the years 0000–9999 (which RFC 3339 cannot express) are clamped to that
/// range, so the output always parses.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use zen_websocket::recorder::format_timestamp;
/// let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
/// assert_eq!(format_timestamp(t), "2023-11-14T22:13:20.123456Z");
/// ```
pub fn format_timestamp(t: SystemTime) -> String {
    let mut out = String::with_capacity(27);
    push_timestamp(&mut out, t);
    out
}

/// [`format_timestamp`], appending to `out` without `format!` (the writer
/// stamps every entry, so this is on its hot path).
pub(crate) fn push_timestamp(out: &mut String, t: SystemTime) {
    let micros = micros_since_epoch(t).clamp(
        i128::from(MIN_SECS) * MICROS,
        i128::from(MAX_SECS) * MICROS + (MICROS - 1),
    );
    // The clamp keeps both parts well inside i64.
    let secs = micros.div_euclid(MICROS) as i64;
    let frac = micros.rem_euclid(MICROS) as u32;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    let mut buf = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut buf[0..4], year.clamp(0, 9999) as u32);
    put_digits(&mut buf[5..7], month);
    put_digits(&mut buf[8..10], day);
    put_digits(&mut buf[11..13], sod / 3600);
    put_digits(&mut buf[14..16], sod % 3600 / 60);
    put_digits(&mut buf[17..19], sod % 60);
    put_digits(&mut buf[20..26], frac);
    // Every byte is an ASCII digit or separator.
    out.push_str(std::str::from_utf8(&buf).unwrap_or("1970-01-01T00:00:00.000000Z"));
}

/// Writes `v` as decimal into `slot`, right-aligned, zero-padded.
fn put_digits(slot: &mut [u8], mut v: u32) {
    for b in slot.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Parses an RFC 3339 time stamp.
///
/// Lenient on purpose, because recordings come from other tools too: 0 to 9
/// fractional digits (more are truncated), `T`, `t` or a space between date
/// and time, and `Z`, `z` or any `±HH:MM` offset (converted to UTC). A leap
/// second (`:60`) is read as the first second of the next minute.
///
/// ```
/// use zen_websocket::recorder::{format_timestamp, parse_timestamp};
/// let t = parse_timestamp("2024-02-29T12:00:00+00:00")?;
/// assert_eq!(format_timestamp(t), "2024-02-29T12:00:00.000000Z");
/// # Ok::<(), zen_websocket::recorder::DecodeError>(())
/// ```
pub fn parse_timestamp(s: &str) -> Result<SystemTime, DecodeError> {
    parse(s).map_err(|reason| DecodeError::Invalid {
        field: "ts",
        reason: format!("{reason} in {}", shorten(s)),
    })
}

/// Nanosecond-free microseconds since the epoch, floored (negative before 1970).
fn micros_since_epoch(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_nanos() / 1000) as i128,
        // Flooring a negative instant rounds its magnitude up.
        Err(e) => -(e.duration().as_nanos().div_ceil(1000) as i128),
    }
}

fn parse(s: &str) -> Result<SystemTime, &'static str> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err("too short for an RFC 3339 time stamp");
    }
    let year = digits(b, 0, 4).ok_or("bad year")?;
    expect(b, 4, b'-')?;
    let month = digits(b, 5, 2).ok_or("bad month")?;
    expect(b, 7, b'-')?;
    let day = digits(b, 8, 2).ok_or("bad day")?;
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err("expected `T` between date and time");
    }
    let hour = digits(b, 11, 2).ok_or("bad hour")?;
    expect(b, 13, b':')?;
    let minute = digits(b, 14, 2).ok_or("bad minute")?;
    expect(b, 16, b':')?;
    let second = digits(b, 17, 2).ok_or("bad second")?;

    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(i64::from(year), month) {
        return Err("day out of range");
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err("time of day out of range");
    }

    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return Err("no digits after the decimal point");
        }
        if n < 9 {
            nanos *= 10u32.pow((9 - n) as u32);
        }
    }

    let offset_secs: i64 = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2], 0, 2).ok_or("bad offset hours")?;
            let m = digits(&[*m1, *m2], 0, 2).ok_or("bad offset minutes")?;
            if h > 23 || m > 59 {
                return Err("offset out of range");
            }
            let v = i64::from(h) * 3600 + i64::from(m) * 60;
            if *sign == b'-' {
                -v
            } else {
                v
            }
        }
        [] => return Err("missing time zone offset (`Z` or `+00:00`)"),
        _ => return Err("bad time zone offset"),
    };

    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
        - offset_secs;
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
    };
    t.ok_or("instant not representable on this platform")
}

fn expect(b: &[u8], i: usize, c: u8) -> Result<(), &'static str> {
    if b.get(i) == Some(&c) {
        Ok(())
    } else {
        Err(match c {
            b'-' => "expected `-` in the date",
            _ => "expected `:` in the time",
        })
    }
}

/// `n` ASCII digits at `b[at..]` as a number; `None` if any is not a digit.
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let slice = b.get(at..at + n)?;
    slice.iter().try_fold(0u32, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// At most 40 characters of untrusted input for an error message.
fn shorten(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// (year, month, day) of the day `z` days after 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to (year, month, day); the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: i64, micros: u32) -> SystemTime {
        let base = if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        };
        base + Duration::from_micros(u64::from(micros))
    }

    #[test]
    fn known_instants_format_exactly() {
        assert_eq!(format_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_timestamp(at(951_782_400, 0)),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            format_timestamp(at(1_709_210_096, 789_012)),
            "2024-02-29T12:34:56.789012Z"
        );
        assert_eq!(
            format_timestamp(at(1_796_171_467, 123_456)),
            "2026-12-02T00:31:07.123456Z"
        );
        assert_eq!(format_timestamp(at(-1, 0)), "1969-12-31T23:59:59.000000Z");
        assert_eq!(
            format_timestamp(at(-2_203_891_200, 0)),
            "1900-03-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn sub_microseconds_are_truncated_toward_the_past() {
        assert_eq!(
            format_timestamp(UNIX_EPOCH + Duration::from_nanos(1_999)),
            "1970-01-01T00:00:00.000001Z"
        );
        assert_eq!(
            format_timestamp(UNIX_EPOCH - Duration::from_nanos(1)),
            "1969-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn instants_beyond_year_9999_are_clamped() {
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(format_timestamp(far), "9999-12-31T23:59:59.999999Z");
        assert!(parse_timestamp(&format_timestamp(far)).is_ok());
    }

    #[test]
    fn leap_years_follow_the_gregorian_rules() {
        assert!(parse_timestamp("2024-02-29T00:00:00Z").is_ok());
        assert!(parse_timestamp("2000-02-29T00:00:00Z").is_ok());
        assert!(parse_timestamp("1900-02-29T00:00:00Z").is_err());
        assert!(parse_timestamp("2023-02-29T00:00:00Z").is_err());
        assert!(parse_timestamp("2023-04-31T00:00:00Z").is_err());
        // The day after Feb 29 is Mar 1, in formatting too.
        let feb29 = parse_timestamp("2024-02-29T00:00:00Z").unwrap();
        assert_eq!(
            format_timestamp(feb29 + Duration::from_secs(86_400)),
            "2024-03-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn the_parser_accepts_zero_to_nine_fraction_digits_and_utc_offsets() {
        let cases = [
            ("2026-12-02T00:31:07Z", 0),
            ("2026-12-02T00:31:07.1Z", 100_000_000),
            ("2026-12-02T00:31:07.123Z", 123_000_000),
            ("2026-12-02T00:31:07.123456Z", 123_456_000),
            ("2026-12-02T00:31:07.123456789Z", 123_456_789),
            ("2026-12-02T00:31:07.123456789999Z", 123_456_789),
            ("2026-12-02T00:31:07.123456+00:00", 123_456_000),
            ("2026-12-02t00:31:07.123456z", 123_456_000),
            ("2026-12-02 00:31:07.123456-00:00", 123_456_000),
        ];
        let base = parse_timestamp("2026-12-02T00:31:07Z").unwrap();
        for (s, nanos) in cases {
            let t = parse_timestamp(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                t.duration_since(base).unwrap(),
                Duration::from_nanos(nanos),
                "{s}"
            );
        }
    }

    #[test]
    fn other_offsets_are_converted_to_utc() {
        let a = parse_timestamp("2026-12-02T02:31:07+02:00").unwrap();
        let b = parse_timestamp("2026-12-01T19:01:07-05:30").unwrap();
        assert_eq!(format_timestamp(a), "2026-12-02T00:31:07.000000Z");
        assert_eq!(format_timestamp(b), "2026-12-02T00:31:07.000000Z");
    }

    #[test]
    fn malformed_time_stamps_are_rejected_with_a_reason() {
        for bad in [
            "",
            "2026-12-02",
            "2026-12-02T00:31:07",
            "2026-12-02T00:31:07.Z",
            "2026-13-02T00:31:07Z",
            "2026-12-00T00:31:07Z",
            "2026-12-02T24:00:00Z",
            "2026-12-02T00:60:00Z",
            "2026-12-02T00:31:07+0200",
            "2026-12-02T00:31:07Zjunk",
            "２０２６-12-02T00:31:07Z",
            "+026-12-02T00:31:07Z",
        ] {
            let e = parse_timestamp(bad).unwrap_err();
            assert!(e.to_string().contains("ts"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_leap_second_reads_as_the_next_minute() {
        let t = parse_timestamp("2016-12-31T23:59:60Z").unwrap();
        assert_eq!(format_timestamp(t), "2017-01-01T00:00:00.000000Z");
    }

    #[test]
    fn civil_days_round_trip_over_many_centuries() {
        for z in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_returns_the_same_microsecond(micros in -62_000_000_000_000_000i64..253_000_000_000_000_000i64) {
            let t = if micros >= 0 {
                UNIX_EPOCH + Duration::from_micros(micros as u64)
            } else {
                UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
            };
            let s = format_timestamp(t);
            prop_assert_eq!(s.len(), 27);
            prop_assert_eq!(parse_timestamp(&s).unwrap(), t);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = parse_timestamp(&s);
        }

        #[test]
        fn parsing_near_valid_text_never_panics(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2}|.{0,3})") {
            let _ = parse_timestamp(&s);
        }
    }
}
