//! The fast path of JSON decoding, for the payload almost every device sends: one flat object whose
//! values are strings without escapes, numbers, booleans or null. It scans the bytes once and
//! hands the decoder exactly the values the general (serde) path would.
//!
//! Owns nothing but the scan. It must never decide anything the general path decides differently:
//! on anything else (nesting, escapes, control characters, numbers it does not read the same way,
//! bad syntax, text after the object) it rolls back the row it began and returns `None`, and the
//! general path decodes the payload from the start, errors included.

use super::columns::Value;
use super::decode::RowDecoder;

/// Decodes `text` (the whole payload, already checked as UTF-8) if it is one flat object; returns
/// the rows accepted (0 or 1), or `None` when the general path must decode it.
pub(super) fn decode_flat(dec: &mut RowDecoder, text: &str, raw: &[u8], received_at: i64) -> Option<usize> {
    let mut s = Scan { text, b: text.as_bytes(), i: 0 };
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
    text: &'a str,
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
            let key = self.string_body()?;
            self.eat(b':')?;
            self.ws();
            let col = dec.lookup_next_key(key);
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

    /// A string's text after its opening quote, through the closing quote; `None` for escapes and
    /// control characters (the general path unescapes or rejects them).
    #[inline]
    fn string_body(&mut self) -> Option<&'a str> {
        let start = self.i;
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'"' => {
                    self.i += 1;
                    // Both ends are ASCII quotes, so the slice is on character boundaries.
                    return self.text.get(start..self.i - 1);
                }
                b'\\' | 0..=0x1f => return None,
                _ => self.i += 1,
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
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let int_digits = self.i - int_start;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return None;
            }
            self.digits();
            float = true;
        }
        let mantissa_end = self.i;
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            let exp_start = self.i;
            self.digits();
            if self.i == exp_start || self.i - exp_start > 3 {
                return None;
            }
            float = true;
        }
        let token = self.text.get(start..self.i)?;
        if float {
            let v: f64 = token.parse().ok()?;
            // Overflow, and a non-zero number rounded to zero, are the general path's to report.
            let zero = self.b[start..mantissa_end].iter().all(|c| matches!(c, b'-' | b'0' | b'.'));
            return (v.is_finite() && (v != 0.0 || zero)).then_some(Value::F64(v));
        }
        if int_digits > 18 {
            return None;
        }
        let n: u64 = token[int_start - start..].parse().ok()?;
        match (negative, n) {
            (false, n) => Some(Value::U64(n)),
            (true, 0) => None,
            // At most 18 digits: within i64.
            (true, n) => Some(Value::I64(-(n as i64))),
        }
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }
}
