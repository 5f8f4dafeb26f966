//! ISO-8601 timestamps as the protocol writes them (`2025-10-21T09:26:24.400576+00:00`)
//! and reads them (`before`/`after`, offset or `Z` optional).
//!
//! Civil-date arithmetic is a few lines (Howard Hinnant's days-from-civil), so no
//! date-time crate is pulled in for it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, formatted for an event's `ts`.
pub fn now_iso() -> String {
    format_iso(SystemTime::now())
}

/// UTC with microseconds and an explicit `+00:00` offset.
pub fn format_iso(t: SystemTime) -> String {
    let (secs, micros) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_micros()),
        Err(e) => {
            let d = e.duration();
            let mut s = -(d.as_secs() as i64);
            let mut us = d.subsec_micros();
            if us > 0 {
                s -= 1;
                us = 1_000_000 - us;
            }
            (s, us)
        }
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Parses `YYYY-MM-DD[T| ]HH:MM[:SS[.fraction]][Z|±HH[:MM]]`, or a bare date.
/// A timestamp without an offset is taken as UTC (the old server stored UTC).
pub fn parse_iso(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs_of_day = 0i64;
    let mut nanos = 0u32;
    let mut offset = 0i64;
    let mut i = 10;
    if i < b.len() {
        if b[i] != b'T' && b[i] != b't' && b[i] != b' ' {
            return None;
        }
        i += 1;
        if b.len() < i + 5 || b[i + 2] != b':' {
            return None;
        }
        let (h, mi) = (num(i..i + 2)?, num(i + 3..i + 5)?);
        i += 5;
        let mut sec = 0;
        if i < b.len() && b[i] == b':' {
            sec = num(i + 1..i + 3)?;
            i += 3;
            if i < b.len() && (b[i] == b'.' || b[i] == b',') {
                let start = i + 1;
                i = start;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let digits = &s[start..i];
                if digits.is_empty() {
                    return None;
                }
                let mut frac: String = digits.chars().take(9).collect();
                while frac.len() < 9 {
                    frac.push('0');
                }
                nanos = frac.parse().ok()?;
            }
        }
        if h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        secs_of_day = h * 3600 + mi * 60 + sec;
        if i < b.len() {
            match b[i] {
                b'Z' | b'z' if i + 1 == b.len() => {}
                b'+' | b'-' => {
                    let sign = if b[i] == b'+' { 1 } else { -1 };
                    let rest = &s[i + 1..];
                    let (oh, om) = match rest.len() {
                        2 => (num(i + 1..i + 3)?, 0),
                        4 => (num(i + 1..i + 3)?, num(i + 3..i + 5)?),
                        5 if rest.as_bytes()[2] == b':' => (num(i + 1..i + 3)?, num(i + 4..i + 6)?),
                        _ => return None,
                    };
                    if oh > 23 || om > 59 {
                        return None;
                    }
                    offset = sign * (oh * 3600 + om * 60);
                }
                _ => return None,
            }
        }
    }
    let total = days_from_civil(y, mo as u32, d as u32) * 86_400 + secs_of_day - offset;
    Some(if total >= 0 {
        UNIX_EPOCH + Duration::new(total as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs((-total) as u64) + Duration::from_nanos(nanos as u64)
    })
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_micros_and_offset() {
        let t = UNIX_EPOCH + Duration::new(1_761_038_784, 400_576_000);
        assert_eq!(format_iso(t), "2025-10-21T09:26:24.400576+00:00");
        assert_eq!(format_iso(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
    }

    #[test]
    fn parses_the_forms_clients_send() {
        let t = UNIX_EPOCH + Duration::new(1_761_038_784, 400_576_000);
        assert_eq!(parse_iso("2025-10-21T09:26:24.400576+00:00"), Some(t));
        assert_eq!(parse_iso("2025-10-21T09:26:24.400576Z"), Some(t));
        assert_eq!(parse_iso("2025-10-21T09:26:24.400576"), Some(t));
        assert_eq!(parse_iso("2025-10-21T18:26:24.400576+09:00"), Some(t));
        assert_eq!(
            parse_iso("2025-10-21"),
            Some(UNIX_EPOCH + Duration::from_secs(1_761_004_800))
        );
        assert_eq!(
            parse_iso("2025-10-21 09:26"),
            Some(UNIX_EPOCH + Duration::from_secs(1_761_038_760))
        );
        for bad in [
            "",
            "yesterday",
            "2025-13-01",
            "2025-10-21T25:00",
            "2025-10-21T09:26:24+0x:00",
            "2025-10-21T09:26:24.Z",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trips_across_years() {
        for secs in [0u64, 951_782_400, 1_709_164_800, 4_102_444_800] {
            let t = UNIX_EPOCH + Duration::new(secs, 123_000);
            assert_eq!(parse_iso(&format_iso(t)), Some(t));
        }
    }
}
