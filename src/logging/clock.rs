//! The timestamp of every log line, `2026-12-03T05:01:02.123456Z` (UTC,
//! microseconds), as tracing-subscriber's `SystemTime` writes it.
//!
//! Converting the time to a calendar date and formatting its six fields
//! took some 2,400 instructions per line, a tenth of what an ASGI hello
//! request costs the reactor when the access log is on. The date and time to
//! the second change once a second: each thread keeps them formatted, and a
//! line only adds its microseconds.

use std::cell::Cell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use super::digits::{ascii, zero_padded};

/// `YYYY-MM-DDTHH:MM:SS`
const SECOND_LEN: usize = 19;

/// The last second this thread formatted, and its text.
#[derive(Clone, Copy)]
struct Second {
    unix: u64,
    text: [u8; SECOND_LEN],
}

thread_local! {
    static LAST: Cell<Option<Second>> = const { Cell::new(None) };
}

/// [`FormatTime`] for the line and JSON formats.
pub(super) struct Clock;

impl FormatTime for Clock {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        write_now(writer)
    }
}

/// Writes the time now.
pub(super) fn write_now(out: &mut impl fmt::Write) -> fmt::Result {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => write_time(out, since.as_secs(), since.subsec_micros()),
        // A clock set before 1970: tracing-subscriber knows how to write that.
        Err(_) => {
            let mut line = String::new();
            tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut line))?;
            out.write_str(&line)
        }
    }
}

fn write_time(out: &mut impl fmt::Write, unix: u64, micros: u32) -> fmt::Result {
    let second = match LAST.get() {
        Some(second) if second.unix == unix => second,
        _ => {
            let second = Second {
                unix,
                text: format_second(unix),
            };
            LAST.set(Some(second));
            second
        }
    };
    let mut fraction = *b".000000Z";
    zero_padded(&mut fraction[1..7], u64::from(micros.min(999_999)));
    out.write_str(ascii(&second.text)?)?;
    out.write_str(ascii(&fraction)?)
}

/// `YYYY-MM-DDTHH:MM:SS` of a second since 1970 (UTC; four-digit years
/// only, which a u64 of seconds since 1970 stays in until the year 10000:
/// later ones are written as 9999-12-31T23:59:59).
fn format_second(unix: u64) -> [u8; SECOND_LEN] {
    let unix = unix.min(253_402_300_799); // 9999-12-31T23:59:59
    let days = unix / 86_400;
    let of_day = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut text = *b"0000-00-00T00:00:00";
    zero_padded(&mut text[0..4], year);
    zero_padded(&mut text[5..7], month);
    zero_padded(&mut text[8..10], day);
    zero_padded(&mut text[11..13], of_day / 3600);
    zero_padded(&mut text[14..16], of_day / 60 % 60);
    zero_padded(&mut text[17..19], of_day % 60);
    text
}

/// The proleptic Gregorian date (year, month 1-12, day 1-31) of a day
/// counted from 1970-01-01 (Howard Hinnant's `civil_from_days`, for days
/// on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Count from 0000-03-01, so that a leap day ends its year.
    let days = days + 719_468;
    let era = days / 146_097;
    let of_era = days % 146_097; // [0, 146096]
    let year_of_era = (of_era - of_era / 1460 + of_era / 36_524 - of_era / 146_096) / 365; // [0, 399]
    let day_of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let month_index = (5 * day_of_year + 2) / 153; // [0, 11], from March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: u64, micros: u32) -> String {
        let mut out = String::new();
        write_time(&mut out, unix, micros).unwrap();
        out
    }

    #[test]
    fn dates_and_times_are_utc() {
        // Expected values from Python's datetime.fromtimestamp(t, timezone.utc).
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(at(951_868_799, 999_999), "2000-02-29T23:59:59.999999Z");
        assert_eq!(at(951_868_800, 120_000), "2000-03-01T00:00:00.120000Z");
        assert_eq!(at(1_796_269_262, 123_456), "2026-12-03T03:41:02.123456Z");
        assert_eq!(at(4_102_444_799, 1), "2099-12-31T23:59:59.000001Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
    }

    #[test]
    fn each_day_follows_the_last() {
        // Walks 1970..2401 a day at a time: dates must advance by exactly one
        // day, through month ends and leap years (2000 is one, 2100 is not).
        let mut last = civil_from_days(0);
        assert_eq!(last, (1970, 1, 1));
        for days in 1..157_000 {
            let (year, month, day) = civil_from_days(days);
            let expected = if last.2 < month_days_of(last) {
                (last.0, last.1, last.2 + 1)
            } else if last.1 < 12 {
                (last.0, last.1 + 1, 1)
            } else {
                (last.0 + 1, 1, 1)
            };
            assert_eq!((year, month, day), expected, "day {days}");
            last = (year, month, day);
        }
        assert_eq!(last.0, 2399);
    }

    fn month_days_of((year, month, _): (u64, u64, u64)) -> u64 {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        [
            31,
            28 + u64::from(leap),
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ][month as usize - 1]
    }

    #[test]
    fn the_cache_follows_the_second() {
        assert_eq!(at(1_796_269_262, 0), "2026-12-03T03:41:02.000000Z");
        assert_eq!(at(1_796_269_263, 7), "2026-12-03T03:41:03.000007Z");
        assert_eq!(at(1_796_269_262, 9), "2026-12-03T03:41:02.000009Z");
    }

    #[test]
    fn now_reads_as_tracing_subscribers_own() {
        let mut ours = String::new();
        write_now(&mut ours).unwrap();
        let mut theirs = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ours} / {theirs}");
        // The same second, unless one fell on either side of its end.
        assert!(
            ours[..SECOND_LEN] == theirs[..SECOND_LEN] || ours[17..19] != theirs[17..19],
            "{ours} / {theirs}"
        );
    }
}
