//! Event-time values: parsing the timestamp spellings the spec accepts and formatting RFC 3339.
//! All timestamps are UTC milliseconds since the epoch (`i64`). Parsing allocates nothing.

/// Watermark / timestamp bounds used as -inf and +inf.
pub const MIN_TS: i64 = i64::MIN;
pub const MAX_TS: i64 = i64::MAX;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

/// Epoch milliseconds of midnight (UTC) of `YYYY-MM-DD`.
fn midnight_ms(b: &[u8]) -> Option<i64> {
    let year = digits(b, 0, 4)? as i64;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400_000)
}

/// Parses `YYYY-MM-DD[T ]HH:MM[:SS[.fff…]][Z|±HH[:MM]]` (no offset means UTC) to epoch milliseconds.
/// Fractions beyond milliseconds are truncated. Returns `None` for anything else.
pub fn parse_timestamp_ms(s: &str) -> Option<i64> {
    parse_timestamp_ms_cached(s, &mut DateCache::default())
}

/// The last date [`parse_timestamp_ms_cached`] read, and its midnight: timestamps of one batch
/// mostly share their date, and turning a date into days is most of a parse.
#[derive(Debug, Default, Clone)]
pub struct DateCache {
    date: [u8; 10],
    midnight_ms: Option<i64>,
}

/// [`parse_timestamp_ms`], reading the date through `cache`.
#[inline]
pub fn parse_timestamp_ms_cached(s: &str, cache: &mut DateCache) -> Option<i64> {
    // Text from a device starts with a digit and ends with a digit or zone letter: `trim` (which
    // walks Unicode whitespace) only when an end is something else.
    let plain = |c: Option<&u8>| c.is_some_and(u8::is_ascii_alphanumeric);
    let b = if plain(s.as_bytes().first()) && plain(s.as_bytes().last()) { s } else { s.trim() }.as_bytes();
    let date = b.get(..10)?;
    let mut ms = match cache.midnight_ms {
        Some(ms) if cache.date == date => ms,
        _ => {
            let ms = midnight_ms(date)?;
            cache.date.copy_from_slice(date);
            cache.midnight_ms = Some(ms);
            ms
        }
    };
    if b.len() == 10 {
        return Some(ms);
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let mut i = 16;
    let mut second = 0;
    if b.get(i) == Some(&b':') {
        second = digits(b, 17, 2)?;
        i = 19;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    ms += (hour as i64 * 3600 + minute as i64 * 60 + second as i64) * 1000;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        let mut frac_ms = 0i64;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if i - start < 3 {
                frac_ms = frac_ms * 10 + (c - b'0') as i64;
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            frac_ms *= 10;
        }
        ms += frac_ms;
    }
    match b.get(i) {
        None => Some(ms),
        Some(b'Z' | b'z') if i + 1 == b.len() => Some(ms),
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, i + 1, 2)? as i64;
            let rest = &b[i + 3..];
            let om = match rest {
                [] => 0,
                [b':', ..] if rest.len() == 3 => digits(rest, 1, 2)? as i64,
                _ if rest.len() == 2 => digits(rest, 0, 2)? as i64,
                _ => return None,
            };
            let off = (oh * 60 + om) * 60_000;
            Some(if sign == b'+' { ms - off } else { ms + off })
        }
        _ => None,
    }
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` to `out`.
pub fn write_rfc3339_ms(ms: i64, out: &mut Vec<u8>) {
    write_ms(ms, out, b'T');
    out.push(b'Z');
}

/// Writes `YYYY-MM-DD HH:MM:SS.fff` (UTC, SQL's timestamp literal) for epoch milliseconds.
pub fn write_sql_ms(ms: i64, out: &mut Vec<u8>) {
    write_ms(ms, out, b' ');
}

fn write_ms(ms: i64, out: &mut Vec<u8>, between: u8) {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{y:04}");
    } else {
        push_digits(y as u32, 4, out);
    }
    // Digits pushed by hand: this runs for every timestamp a sink writes, and `write!` costs
    // several times as much.
    let rem = rem as u32;
    let fields = [(b'-', m, 2), (b'-', d, 2), (between, rem / 3_600_000, 2)];
    let clock = [(b':', rem / 60_000 % 60, 2), (b':', rem / 1000 % 60, 2), (b'.', rem % 1000, 3)];
    for (sep, v, n) in fields.into_iter().chain(clock) {
        out.push(sep);
        push_digits(v, n, out);
    }
}

/// Appends the last `n` decimal digits of `v`, zero-padded.
fn push_digits(mut v: u32, n: usize, out: &mut Vec<u8>) {
    let mut buf = [b'0'; 4];
    for b in buf[..n].iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf[..n]);
}

/// RFC 3339 text of a timestamp, for messages and the console.
pub fn rfc3339_ms(ms: i64) -> String {
    let mut v = Vec::with_capacity(24);
    write_rfc3339_ms(ms, &mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_spellings() {
        let z = parse_timestamp_ms("2026-03-01T08:00:00.384Z").unwrap();
        assert_eq!(parse_timestamp_ms("2026-03-01 08:00:00.384"), Some(z));
        assert_eq!(parse_timestamp_ms("2026-03-01T09:00:00.384+01:00"), Some(z));
        assert_eq!(parse_timestamp_ms("2026-03-01T03:00:00.384-0500"), Some(z));
        assert_eq!(parse_timestamp_ms("2026-03-01T08:00:00.384999Z"), Some(z));
        assert_eq!(parse_timestamp_ms("2026-03-01T08:00:00.3Z"), Some(z - 84));
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp_ms("1969-12-31T23:59:59.999Z"), Some(-1));
        for bad in [
            "",
            "hot",
            "2026-02-30T00:00:00Z",
            "2026-03-01T25:00:00Z",
            "2026-03-01T08:00:00.Z",
            "2026-03-01T08:00:00Zx",
        ] {
            assert_eq!(parse_timestamp_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_and_round_trips() {
        for ms in [0i64, -1, 1_772_352_000_384, 951_782_400_000, -62_135_596_800_000] {
            let s = rfc3339_ms(ms);
            assert_eq!(parse_timestamp_ms(&s), Some(ms), "{s}");
        }
        assert_eq!(rfc3339_ms(1_772_352_000_384), "2026-03-01T08:00:00.384Z");
        // Beyond four-digit years, as `write!` spells them.
        assert_eq!(rfc3339_ms(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-62_167_219_200_001), "-001-12-31T23:59:59.999Z");
    }

    proptest::proptest! {
        /// The hand-written digits say what chrono says, from year 0 to 9999 (beyond, the year
        /// is written by `write!`, without chrono's sign).
        #[test]
        fn formats_as_chrono_does(ms in -62_167_219_200_000i64..253_402_300_800_000) {
            let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
            let mut sql = Vec::new();
            write_sql_ms(ms, &mut sql);
            proptest::prop_assert_eq!(String::from_utf8(sql).unwrap(), t.format("%Y-%m-%d %H:%M:%S%.3f").to_string());
            proptest::prop_assert_eq!(rfc3339_ms(ms), t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        }

        /// One cache read by a run of texts (same and other dates, good and bad) gives what
        /// parsing each alone gives.
        #[test]
        fn the_date_cache_changes_nothing(texts in proptest::collection::vec(
            "(2026-0[12]-(28|29|30|31)|2024-02-29| 2026-03-01|2026-03-01|2026-3-01)([T ]0[0-9]:[0-5][0-9](:[0-6][0-9])?(\\.[0-9]{1,4})?(Z|\\+01:00|-0530|x)?)? ?",
            1..12,
        )) {
            let mut cache = DateCache::default();
            for t in &texts {
                proptest::prop_assert_eq!(parse_timestamp_ms_cached(t, &mut cache), parse_timestamp_ms(t), "{:?}", t);
            }
        }
    }
}
