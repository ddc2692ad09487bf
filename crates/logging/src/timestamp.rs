//! A line's time: RFC 3339 in UTC with microseconds, `2026-03-01T12:00:00.123456Z`, the form
//! ztunnel's lines carry (six fractional digits, truncated, and `Z`).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Displays an instant as `YYYY-MM-DDThh:mm:ss.ffffffZ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (seconds, nanos) = unix(self.0);
        let days = seconds.div_euclid(86_400);
        let in_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        match year {
            0..=9999 => write!(f, "{year:04}")?,
            10_000.. => write!(f, "+{year}")?,
            _ => write!(f, "{year:05}")?,
        }
        write!(
            f,
            "-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            in_day / 3600,
            in_day % 3600 / 60,
            in_day % 60,
            nanos / 1000,
        )
    }
}

/// Whole seconds since the Unix epoch (negative before it) and the nanoseconds after them.
fn unix(at: SystemTime) -> (i64, u32) {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => (saturate(after.as_secs()), after.subsec_nanos()),
        Err(before) => {
            let before = before.duration();
            let seconds = -saturate(before.as_secs());
            match before.subsec_nanos() {
                0 => (seconds, 0),
                nanos => (seconds - 1, 1_000_000_000 - nanos),
            }
        }
    }
}

fn saturate(seconds: u64) -> i64 {
    // SystemTime spans far less than i64 seconds on every platform; saturate rather than wrap.
    i64::try_from(seconds).unwrap_or(i64::MAX / 2)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, public domain).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction: month 1..=12, day 1..=31.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(seconds: u64, nanos: u32) -> String {
        Timestamp(UNIX_EPOCH + Duration::new(seconds, nanos)).to_string()
    }

    #[test]
    fn formats_rfc3339_utc_with_microseconds() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2026-03-01T12:34:56.789012345Z: microseconds are truncated, not rounded.
        assert_eq!(
            at(1_772_368_496, 789_012_999),
            "2026-03-01T12:34:56.789012Z"
        );
        // Leap days, and the last second of a year.
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_735_689_599, 1_000), "2024-12-31T23:59:59.000001Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn instants_before_the_epoch_count_backwards() {
        let before = UNIX_EPOCH - Duration::new(1, 500_000_000);
        assert_eq!(Timestamp(before).to_string(), "1969-12-31T23:59:58.500000Z");
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        // Days since the epoch back to dates and forward again, over a full 400-year cycle.
        let mut expected = (1970_i64, 1_u32, 1_u32);
        for days in 0..146_097 {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            let (y, m, d) = expected;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_days = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            expected = match (d == month_days, m == 12) {
                (false, _) => (y, m, d + 1),
                (true, false) => (y, m + 1, 1),
                (true, true) => (y + 1, 1, 1),
            };
        }
    }
}
