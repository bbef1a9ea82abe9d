//! The fast path of JSON decoding, for the payload almost every device sends: one flat object whose
//! values are strings without escapes, numbers, booleans or null. It scans the bytes once and
//! hands the decoder exactly the values the general (serde) path would.
//!
//! Owns nothing but the scan. It must never decide anything the general path decides differently:
//! on anything else (nesting, escapes, control characters, numbers it does not read the same way,
//! bad syntax, text after the object, invalid UTF-8) it rolls back the row it began and returns
//! `None`, and the general path decodes the payload from the start, errors included.
//!
//! It checks UTF-8 itself, so that the payload is read once: every byte outside strings must be
//! one of JSON's ASCII tokens, and each string is checked as it is scanned.

use super::columns::Value;
use super::decode::RowDecoder;

/// Decodes `raw` (the whole payload, not yet checked as UTF-8) if it is one flat object; returns
/// the rows accepted (0 or 1), or `None` when the general path must decode it.
pub(super) fn decode_flat(dec: &mut RowDecoder, raw: &[u8], received_at: i64) -> Option<usize> {
    let mut s = Scan { b: raw, i: 0 };
    s.ws();
    if s.peek() != Some(b'{') {
        return None;
    }
    s.i += 1;
    dec.begin_row();
    if s.object(dec).is_none() {
        dec.abort_row();
        return None;
    }
    s.ws();
    if s.i != s.b.len() {
        dec.abort_row();
        return None;
    }
    Some(dec.end_row(raw, received_at) as usize)
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips JSON whitespace.
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// The members after `{`, through the closing `}`.
    fn object(&mut self, dec: &mut RowDecoder) -> Option<()> {
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Some(());
        }
        loop {
            self.eat(b'"')?;
            let col = match dec.predicted_key() {
                // The name has no quote, backslash or control character, so these bytes followed
                // by a quote are the key itself, unescaped: no scan for its end is needed.
                Some((c, name)) if is_at(self.b, self.i, name) && self.b.get(self.i + name.len()) == Some(&b'"') => {
                    self.i += name.len() + 1;
                    dec.accept_predicted_key();
                    Some(c)
                }
                _ => {
                    let key = self.string_body()?;
                    dec.lookup_next_key(key)
                }
            };
            self.eat(b':')?;
            self.ws();
            let value = self.scalar()?;
            match col {
                // A nested column takes JSON text: the general path's, except for null.
                Some(c) if dec.is_json_text(c) && !matches!(value, Value::Null) => return None,
                Some(c) => dec.set(c, value),
                None => {}
            }
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string's text after its opening quote, through the closing quote; `None` for escapes,
    /// control characters and invalid UTF-8 (the general path unescapes or rejects them).
    #[inline]
    fn string_body(&mut self) -> Option<&'a str> {
        let (b, start) = (self.b, self.i);
        let mut i = start;
        // Eight bytes at a time while all are ASCII and none is a quote, backslash or control.
        while let Some(chunk) = b.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().ok()?);
            if special_or_not_ascii(word) {
                break;
            }
            i += 8;
        }
        let mut ascii = true;
        while let Some(&c) = b.get(i) {
            match c {
                b'"' => {
                    self.i = i + 1;
                    let body = &b[start..i];
                    if !ascii {
                        return std::str::from_utf8(body).ok();
                    }
                    debug_assert!(body.is_ascii());
                    // SAFETY: every byte of `body` was seen to be below 0x80 (by the word test or
                    // the loop here), and ASCII is valid UTF-8.
                    return Some(unsafe { std::str::from_utf8_unchecked(body) });
                }
                b'\\' | 0..=0x1f => return None,
                0x80.. => {
                    ascii = false;
                    i += 1;
                }
                _ => i += 1,
            }
        }
        None
    }

    /// A scalar value: string, number, `true`, `false` or `null`.
    fn scalar(&mut self) -> Option<Value<'a>> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string_body().map(Value::Str)
            }
            b't' => self.word(b"true", Value::Bool(true)),
            b'f' => self.word(b"false", Value::Bool(false)),
            b'n' => self.word(b"null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn word(&mut self, w: &[u8], v: Value<'a>) -> Option<Value<'a>> {
        if self.b[self.i..].starts_with(w) {
            self.i += w.len();
            Some(v)
        } else {
            None
        }
    }

    /// A number in JSON's grammar. Integers of up to 18 digits are read as the general path reads
    /// them (non-negative: U64, negative: I64); a fraction or exponent makes an F64, rounded
    /// correctly as the general path does (serde_json's `float_roundtrip`). Anything else — more
    /// digits, `-0`, out of range — goes to the general path.
    fn number(&mut self) -> Option<Value<'a>> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let int_start = self.i;
        // The digits of integer and fraction as one integer, exact while there are at most 19.
        let mut mantissa = 0u64;
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => mantissa = self.digits(0),
            _ => return None,
        }
        let int_digits = self.i - int_start;
        let mut frac_digits = 0;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return None;
            }
            let frac_start = self.i;
            mantissa = self.digits(mantissa);
            frac_digits = self.i - frac_start;
            float = true;
        }
        let mantissa_end = self.i;
        let mut exp = 0i32;
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            let exp_negative = self.peek() == Some(b'-');
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            let exp_start = self.i;
            let e = self.digits(0);
            if self.i == exp_start || self.i - exp_start > 3 {
                return None;
            }
            // At most three digits: fits i32.
            exp = if exp_negative { -(e as i32) } else { e as i32 };
            float = true;
        }
        if float {
            let v: f64 = match exact_f64(mantissa, int_digits + frac_digits, exp - frac_digits as i32) {
                Some(v) if negative => -v,
                Some(v) => v,
                // Digits, signs, point and exponent letter: ASCII.
                None => std::str::from_utf8(&self.b[start..self.i]).ok()?.parse().ok()?,
            };
            // Overflow, and a non-zero number rounded to zero, are the general path's to report.
            let zero = self.b[start..mantissa_end].iter().all(|c| matches!(c, b'-' | b'0' | b'.'));
            return (v.is_finite() && (v != 0.0 || zero)).then_some(Value::F64(v));
        }
        if int_digits > 18 {
            return None;
        }
        match (negative, mantissa) {
            (false, n) => Some(Value::U64(n)),
            (true, 0) => None,
            // At most 18 digits: within i64.
            (true, n) => Some(Value::I64(-(n as i64))),
        }
    }

    /// Skips decimal digits, appending them to `acc` (wrapping: callers use the value only when
    /// there were at most 19 digits in all).
    #[inline]
    fn digits(&mut self, mut acc: u64) -> u64 {
        while let Some(c @ b'0'..=b'9') = self.peek() {
            acc = acc.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            self.i += 1;
        }
        acc
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `word` is a quote, a backslash, below 0x20 or not ASCII (the classic "has
/// zero byte" and "has byte less than" tricks; exact as to whether one exists, which is all that
/// is asked).
#[inline]
fn special_or_not_ascii(word: u64) -> bool {
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH_BITS;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH_BITS;
    quote | backslash | control | (word & HIGH_BITS) != 0
}

/// Whether `hay` holds `name` at `at`. Names are short: an inline compare, not a call to `memcmp`.
#[inline]
fn is_at(hay: &[u8], at: usize, name: &[u8]) -> bool {
    match hay.get(at..at + name.len()) {
        Some(here) => here.iter().zip(name).all(|(a, b)| a == b),
        None => false,
    }
}

/// Powers of ten that an f64 holds exactly.
const EXACT_POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// `mantissa × 10^exp10` rounded correctly, when one IEEE operation on exact operands gives it
/// (Clinger's fast path: the mantissa below 2^53, |exp10| ≤ 22); `None` otherwise.
#[inline]
fn exact_f64(mantissa: u64, digits: usize, exp10: i32) -> Option<f64> {
    if digits > 19 || mantissa >= 1 << 53 {
        return None;
    }
    let m = mantissa as f64;
    let p = *EXACT_POW10.get(exp10.unsigned_abs() as usize)?;
    Some(if exp10 < 0 { m / p } else { m * p })
}
