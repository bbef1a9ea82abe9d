//! Floats as a sink writes them: the text Rust's `Display` gives (the shortest digits that read
//! back as the same value, no exponent), made from `ryu`'s digits, which cost a fraction of
//! `Display`'s formatting machinery.
//!
//! The two agree on the digits but for one case: a value exactly halfway between two shortest
//! spellings, where `ryu` rounds to the even last digit and `Display` rounds up
//! (`140737488355328.125`: `…28.12` and `…28.13`). Such a value is found exactly and given
//! `Display`'s digit. A sink's text must never change with this module: the tests hold it to
//! `Display` over random bit patterns and constructed halfway values. Finite values only.

/// Appends `v` as `format!("{v}")` would. `v` must be finite.
pub fn write_f64(v: f64, out: &mut Vec<u8>) {
    debug_assert!(v.is_finite());
    let bits = v.to_bits();
    let (frac, biased) = (bits & ((1 << 52) - 1), ((bits >> 52) & 0x7ff) as i32);
    let (mant, exp2) = if biased == 0 { (frac, -1074) } else { (frac | (1 << 52), biased - 1075) };
    write_shortest(ryu::Buffer::new().format_finite(v), mant, exp2, out);
}

/// Appends `v` as `format!("{v}")` would (the f32's own shortest text). `v` must be finite.
pub fn write_f32(v: f32, out: &mut Vec<u8>) {
    debug_assert!(v.is_finite());
    let bits = v.to_bits();
    let (frac, biased) = (u64::from(bits & ((1 << 23) - 1)), ((bits >> 23) & 0xff) as i32);
    let (mant, exp2) = if biased == 0 { (frac, -149) } else { (frac | (1 << 23), biased - 150) };
    write_shortest(ryu::Buffer::new().format_finite(v), mant, exp2, out);
}

/// The most digits `ryu` gives (17 for f64, 9 for f32).
const MAX_DIGITS: usize = 17;

/// Lays out `ryu`'s text of the value `mant`·2^`exp2` as `Display` does.
///
/// For 1e-5 ≤ |v| < 1e16 ryu writes `[-]ddd.ddd` (`.0` on integral values), which is `Display`'s
/// layout already; it is copied unless the value could be a halfway one. Anything else (an
/// exponent, or a possible halfway value) takes [`write_from_digits`].
fn write_shortest(ryu_text: &str, mant: u64, exp2: i32, out: &mut Vec<u8>) {
    let text = ryu_text.as_bytes();
    if !text.contains(&b'e') {
        let body = text.strip_suffix(b".0").unwrap_or(text);
        // The decimal exponent of the last significant digit: ryu writes no trailing zero
        // after a point, and an integral value's zeros are before it.
        let k = match body.iter().position(|&b| b == b'.') {
            Some(point) => -((body.len() - point - 1) as i32),
            None => body.iter().rev().take_while(|&&b| b == b'0').count() as i32,
        };
        if !may_be_halfway(mant, exp2, k) {
            out.extend_from_slice(body);
            return;
        }
    }
    write_from_digits(text, mant, exp2, out);
}

/// The general layout: `text` (`[-]d.ddd[e[-]x]` or `[-]ddd.ddd`) as digits `d` and decimal
/// exponent `k` (the value is d·10^k), the halfway case settled, then written as `Display` does.
fn write_from_digits(text: &[u8], mant: u64, exp2: i32, out: &mut Vec<u8>) {
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let (significand, exp10) = match text.iter().position(|&b| b == b'e') {
        Some(at) => (&text[..at], parse_exponent(&text[at + 1..])),
        None => (text, 0),
    };
    // Digits without the point and leading zeros; k counts the digits after the point.
    let mut digits = [0u8; MAX_DIGITS + 1];
    let (mut n, mut k) = (0usize, exp10);
    let mut after_point = false;
    for &b in significand {
        match b {
            b'.' => after_point = true,
            b'0' if n == 0 => k -= i32::from(after_point),
            _ => {
                // ryu never writes more digits than the type's shortest spelling needs.
                debug_assert!(n < digits.len());
                digits[n] = b - b'0';
                n += 1;
                k -= i32::from(after_point);
            }
        }
    }
    while n > 0 && digits[n - 1] == 0 {
        n -= 1;
        k += 1;
    }
    if negative {
        out.push(b'-');
    }
    if n == 0 {
        out.push(b'0');
        return;
    }
    if is_halfway_above(mant, exp2, &digits[..n], k) {
        // The last digit is even (ryu's tie rule), so adding one carries nowhere.
        debug_assert!(digits[n - 1] % 2 == 0);
        digits[n - 1] += 1;
    }
    let digits = &digits[..n];
    let ascii = |d: &[u8], out: &mut Vec<u8>| out.extend(d.iter().map(|d| d + b'0'));
    if k >= 0 {
        ascii(digits, out);
        out.resize(out.len() + k as usize, b'0');
    } else if n as i32 > -k {
        let whole = (n as i32 + k) as usize;
        ascii(&digits[..whole], out);
        out.push(b'.');
        ascii(&digits[whole..], out);
    } else {
        out.extend_from_slice(b"0.");
        out.resize(out.len() + (-k - n as i32) as usize, b'0');
        ascii(digits, out);
    }
}

fn parse_exponent(text: &[u8]) -> i32 {
    let (sign, text) = match text.split_first() {
        Some((b'-', rest)) => (-1, rest),
        _ => (1, text),
    };
    sign * text.iter().fold(0i32, |e, &b| e * 10 + i32::from(b - b'0'))
}

/// Whether `mant`·2^`exp2` is exactly (d + ½)·10^k, d the decimal `digits`: the one case where
/// `Display` (rounding up) and `ryu` (rounding to even) give different last digits.
///
/// 2·mant·2^exp2 = (2d + 1)·10^k with mant odd (trailing zero bits moved into exp2) and 2d + 1
/// odd: for k ≥ 0 the powers of two give exp2 + 1 = k and mant = (2d + 1)·5^k; for k < 0,
/// exp2 + 1 = k and mant·5^-k = 2d + 1. Both sides are below 2^53 (mant) or 2·10^17
/// (2d + 1), so |k| > 27 never matches, and every product fits in a u128.
fn is_halfway_above(mant: u64, exp2: i32, digits: &[u8], k: i32) -> bool {
    if !may_be_halfway(mant, exp2, k) {
        return false;
    }
    let mant = u128::from(mant >> mant.trailing_zeros());
    let d = digits.iter().fold(0u128, |d, &x| d * 10 + u128::from(x));
    let odd = 2 * d + 1;
    let pow5 = 5u128.pow(k.unsigned_abs());
    if k >= 0 {
        mant == odd * pow5
    } else {
        mant * pow5 == odd
    }
}

/// The powers-of-two half of [`is_halfway_above`]'s test, which almost every value fails:
/// exp2 + 1 = k once mant's trailing zero bits are moved into exp2 (for either sign of k).
fn may_be_halfway(mant: u64, exp2: i32, k: i32) -> bool {
    mant != 0 && (-27..=27).contains(&k) && exp2 + mant.trailing_zeros() as i32 + 1 == k
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn text64(v: f64) -> String {
        let mut out = Vec::new();
        write_f64(v, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn text32(v: f32) -> String {
        let mut out = Vec::new();
        write_f32(v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn halfway_values_round_up_as_display_does() {
        // 2^47 + 1/8 = 140737488355328.125, halfway between …28.12 and …28.13.
        let halfway = 2f64.powi(47) + 0.125;
        for v in [halfway, 0.5, 2.5, 1.5e-300, 9007199254740993.0, 0.125, 1e22, 1e23] {
            assert_eq!(text64(v), format!("{v}"), "{v:e}");
        }
        assert_eq!(text64(halfway), "140737488355328.13");
        for v in [16777217.0f32, 0.5, 1.5, 8388608.5, 1e-45, 3.4028235e38] {
            assert_eq!(text32(v), format!("{v}"), "{v:e}");
        }
    }

    #[test]
    fn zeros_and_extremes_read_as_display_does() {
        for v in [
            0.0f64,
            -0.0,
            1.0,
            -1.0,
            0.1,
            1e-7,
            1e300,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
            83.24600000000001,
        ] {
            assert_eq!(text64(v), format!("{v}"), "{v:e}");
        }
        for v in [0.0f32, -0.0, 22.78, 1e-40, f32::MAX, f32::MIN_POSITIVE] {
            assert_eq!(text32(v), format!("{v}"), "{v:e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn any_f64_reads_as_display_does(bits in any::<u64>()) {
            let v = f64::from_bits(bits);
            prop_assume!(v.is_finite());
            prop_assert_eq!(text64(v), format!("{v}"));
        }

        #[test]
        fn any_f32_reads_as_display_does(bits in any::<u32>()) {
            let v = f32::from_bits(bits);
            prop_assume!(v.is_finite());
            prop_assert_eq!(text32(v), format!("{v}"));
        }

        /// Values as sensors and queries make them (a reading with a few decimals, scaled),
        /// which ryu writes without an exponent and which take the copying path.
        #[test]
        fn readings_read_as_display_does(int in -1_000_000_000_000i64..1_000_000_000_000, decimals in 0i32..8) {
            let v = int as f64 / 10f64.powi(decimals);
            prop_assert_eq!(text64(v), format!("{v}"));
            prop_assert_eq!(text64(0.908 * v), format!("{}", 0.908 * v));
            prop_assert_eq!(text32(v as f32), format!("{}", v as f32));
        }

        /// Dyadic values (an integer times a power of two) have exact decimal expansions, and
        /// among them are the halfway values random bits almost never hit.
        #[test]
        fn dyadic_values_read_as_display_does(m in 1u64..(1 << 53), shift in -80i32..80, negative in any::<bool>()) {
            let v = m as f64 * 2f64.powi(shift) * if negative { -1.0 } else { 1.0 };
            prop_assert_eq!(text64(v), format!("{v}"));
            let m32 = (m >> 29) as f32 * 2f32.powi(shift.clamp(-60, 60));
            prop_assume!(m32.is_finite());
            prop_assert_eq!(text32(m32), format!("{m32}"));
        }
    }
}
