//! JSON payloads: one object (a file line, a message) or an array of objects (a message).
//! Values are visited in place and pushed straight into column buffers; nothing is allocated per row
//! except for strings with escapes.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::columns::Value;
use super::decode::RowDecoder;

/// Decodes one JSON payload into rows of `dec`. Returns the number of rows accepted; every bad row (or
/// the whole payload, when it is not JSON) becomes an error row. A flat object takes the fast path
/// (`json_flat`), everything else the general one; both give the same rows and errors.
pub fn decode_json(dec: &mut RowDecoder, payload: &[u8], received_at: i64) -> usize {
    decode_with(dec, payload, received_at, true)
}

fn decode_with(dec: &mut RowDecoder, payload: &[u8], received_at: i64, fast: bool) -> usize {
    let before = dec.rows();
    // The fast path checks UTF-8 as it scans.
    if fast {
        if let Some(n) = super::json_flat::decode_flat(dec, payload, received_at) {
            return n;
        }
    }
    // One UTF-8 check per payload; the parser then reads strings without checking each again.
    let text = match std::str::from_utf8(payload) {
        Ok(t) => t,
        Err(e) => {
            dec.reject(payload, &format!("not valid JSON: invalid UTF-8 at byte {}", e.valid_up_to()), received_at);
            return 0;
        }
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let result = Payload { dec: &mut *dec, raw: payload, received_at }.deserialize(&mut de).and_then(|()| de.end());
    if let Err(e) = result {
        // A syntax error: a row begun in this payload is rolled back; complete rows before it stay;
        // the payload is recorded once as an error.
        dec.abort_row();
        dec.reject(payload, &format!("not valid JSON: {e}"), received_at);
    }
    dec.rows() - before
}

struct Payload<'a> {
    dec: &'a mut RowDecoder,
    raw: &'a [u8],
    received_at: i64,
}

impl<'de> DeserializeSeed<'de> for Payload<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Payload<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object or an array of objects")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.dec.begin_row();
        read_object(self.dec, map)?;
        self.dec.end_row(self.raw, self.received_at);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            self.dec.begin_row();
            let got = seq.next_element_seed(Element { dec: &mut *self.dec, index })?;
            if got.is_none() {
                // The row begun for an element that is not there (metadata columns are already
                // set by `begin_row`) is rolled back.
                self.dec.abort_row();
                return Ok(());
            }
            self.dec.end_row(self.raw, self.received_at);
            index += 1;
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom("expected a JSON object, got null"))
    }
}

/// One element of an array payload: must be an object.
struct Element<'a> {
    dec: &'a mut RowDecoder,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        read_object(self.dec, map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.dec.fail_row(format!("array element {}: expected an object, got an array", self.index));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.dec.fail_row(format!("array element {}: expected an object, got a string", self.index));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.dec.fail_row(format!("array element {}: expected an object, got a number", self.index));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.dec.fail_row(format!("array element {}: expected an object, got a boolean", self.index));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.dec.fail_row(format!("array element {}: expected an object, got null", self.index));
        Ok(())
    }
}

fn read_object<'de, A: MapAccess<'de>>(dec: &mut RowDecoder, mut map: A) -> Result<(), A::Error> {
    while let Some(col) = map.next_key_seed(KeySeed { dec: &mut *dec })? {
        match col {
            Some(i) if dec.is_json_text(i) => {
                let raw: &serde_json::value::RawValue = map.next_value()?;
                if raw.get() == "null" {
                    dec.set(i, Value::Null);
                } else {
                    dec.set_json_text(i, raw.get());
                }
            }
            Some(i) => map.next_value_seed(ScalarSeed { dec: &mut *dec, col: i })?,
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(())
}

struct KeySeed<'a> {
    dec: &'a mut RowDecoder,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.dec.lookup_next_key(v))
    }
}

struct ScalarSeed<'a> {
    dec: &'a mut RowDecoder,
    col: usize,
}

impl<'de> DeserializeSeed<'de> for ScalarSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.dec.set(self.col, Value::Bool(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.dec.set(self.col, Value::I64(v));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.dec.set(self.col, Value::U64(v));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.dec.set(self.col, Value::F64(v));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.dec.set(self.col, Value::Str(v));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.dec.set(self.col, Value::Null);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        let name = self.dec.columns()[self.col].name.clone();
        self.dec.fail_row(format!("column '{name}': expected a scalar, got an object"));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        let name = self.dec.columns()[self.col].name.clone();
        self.dec.fail_row(format!("column '{name}': expected a scalar, got an array"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::decode::DecodeColumn;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type, TimestampMillisecondType};

    fn decoder() -> RowDecoder {
        let col = |n: &str, t: DataType, nullable: bool| DecodeColumn {
            name: n.into(),
            data_type: t,
            nullable,
            metadata_key: None,
        };
        RowDecoder::new(
            vec![
                col("device_id", DataType::Utf8, false),
                col("temp", DataType::Float64, true),
                col("ts", crate::types::TS_TYPE, false),
            ],
            Some(2),
        )
        .unwrap()
    }

    fn payload() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            "\\[?\\{\"device_id\":\"[a-z]{0,3}\",\"ts\":[0-9]{1,4}\\}(,\\{\"ts\":1\\})?\\]?"
                .prop_map(String::into_bytes),
            Just(b"[]".to_vec()),
        ]
    }

    proptest::proptest! {
        /// Any bytes, as messages with metadata: never a panic, every column as long as the rows
        /// (the batch builds), and the batch holds exactly the rows decode_json accepted.
        #[test]
        fn any_payload_with_metadata_gives_consistent_batches(payloads in proptest::collection::vec(payload(), 1..12)) {
            use crate::format::decode::MetaValue;
            let mut cols = decoder().columns().to_vec();
            cols.push(DecodeColumn { name: "topic".into(), data_type: DataType::Utf8, nullable: true, metadata_key: Some("topic".into()) });
            let mut d = RowDecoder::new(cols, Some(2)).unwrap();
            let mut accepted = 0;
            for (i, p) in payloads.iter().enumerate() {
                d.set_meta(0, if i % 3 == 0 { MetaValue::Null } else { MetaValue::Text(format!("t/{i}")) });
                accepted += decode_json(&mut d, p, 0);
            }
            let batch = d.finish();
            proptest::prop_assert!(batch.is_ok(), "{:?}", batch.err());
            proptest::prop_assert_eq!(batch.unwrap().map(|b| b.num_rows()).unwrap_or(0), accepted);
            proptest::prop_assert!(d.errors.finish().is_ok());
        }
    }

    /// Payloads near the fast path's edge: flat objects of every scalar kind, with escapes,
    /// nesting, odd numbers, whitespace, duplicates and trailing text mixed in.
    fn near_flat_payload() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("device_id"),
            Just("temp"),
            Just("n"),
            Just("ok"),
            Just("ts"),
            Just("st"),
            Just("other"),
            Just("TEMP"),
            Just("dev\\u0069ce_id"),
            Just("n\\n"),
            // A known name followed by more, or cut short: not the column the key order predicts.
            Just("temperature"),
            Just("tem"),
            Just("device_idx"),
            Just("device_i"),
        ];
        let value = prop_oneof![
            "[a-z0-9 ]{0,6}".prop_map(|s| format!("\"{s}\"")),
            // Longer strings, with what ends or escapes them anywhere in a run of eight bytes.
            "[a-z0-9é\\-]{0,20}(\\\\n|\\\\\"|\t|\u{1}|\u{1f}|\u{7f}|)[a-z0-9 ]{0,12}".prop_map(|s| format!("\"{s}\"")),
            Just("\"a\\\"b\"".to_string()),
            Just("\"tab\there\"".to_string()),
            // Invalid UTF-8 in a string (the markers become bytes below).
            Just("\"abc<LEAD>defghijk\"".to_string()),
            Just("\"<FF>\"".to_string()),
            Just("\"2026-03-01T08:00:00Z\"".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (-99i64..99).prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            (-9999i64..9999, 0u32..6, -400i32..400).prop_map(|(m, d, e)| format!("{m}.{:0>w$}e{e}", 7, w = d as usize)),
            (-9999i64..9999, 1u32..4).prop_map(|(m, d)| format!("{}", m as f64 / 10f64.powi(d as i32))),
            // Around the exact path's limits: mantissas of up to 20 digits (2^53 is 16), a point
            // anywhere in them, exponents around ±22.
            (any::<bool>(), "[1-9][0-9]{0,19}", any::<prop::sample::Index>(), prop::option::of(-40i32..40)).prop_map(
                |(neg, digits, point, exp)| {
                    let at = point.index(digits.len()).max(1);
                    let (int, frac) = digits.split_at(at);
                    let frac = if frac.is_empty() { String::new() } else { format!(".{frac}") };
                    let exp = exp.map(|e| format!("e{e}")).unwrap_or_default();
                    format!("{}{int}{frac}{exp}", if neg { "-" } else { "" })
                }
            ),
            Just("9007199254740993.0".to_string()),
            Just("9007199254740992e22".to_string()),
            Just("1e22".to_string()),
            Just("1e23".to_string()),
            Just("1e-22".to_string()),
            Just("0.000000000000000000001".to_string()),
            Just("-0".to_string()),
            Just("-0.0".to_string()),
            Just("01".to_string()),
            Just("1.".to_string()),
            Just("1e5".to_string()),
            Just("1E+2".to_string()),
            Just("2e-1000".to_string()),
            Just("1e400".to_string()),
            Just("0.0".to_string()),
            Just("12345678901234567890".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("null".to_string()),
            Just("nul".to_string()),
            Just("{\"a\":1}".to_string()),
            Just("[1,2]".to_string()),
            Just("{}".to_string()),
        ];
        let ws = prop_oneof![Just(""), Just(" "), Just("\t"), Just(" \r\n ")];
        let members = proptest::collection::vec((key, value, ws.clone()), 0..7);
        let tail = prop_oneof![Just(""), Just(""), Just(" "), Just(","), Just(" x"), Just("}"), Just("{}")];
        (ws, members, tail, any::<bool>(), any::<bool>()).prop_map(|(w, m, tail, trailing_comma, complete)| {
            // Half the objects start with valid NOT NULL members, so that their rows (not just
            // error rows) are compared.
            let required = complete.then(|| r#""device_id":"d","ts":1"#.to_string());
            let body: Vec<String> =
                required.into_iter().chain(m.iter().map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))).collect();
            let comma = if trailing_comma && !body.is_empty() { "," } else { "" };
            let text = format!("{w}{{{}{comma}}}{tail}", body.join(","));
            // A lead byte with no continuation, and a byte UTF-8 never uses.
            text.replace("<LEAD>", "\u{1}")
                .replace("<FF>", "\u{2}")
                .into_bytes()
                .into_iter()
                .map(|b| match b {
                    1 => 0xc3,
                    2 => 0xff,
                    b => b,
                })
                .collect::<Vec<u8>>()
        })
    }

    fn every_kind_decoder() -> RowDecoder {
        let col = |n: &str, t: DataType, nullable: bool| DecodeColumn {
            name: n.into(),
            data_type: t,
            nullable,
            metadata_key: None,
        };
        let st = DataType::Struct(vec![arrow::datatypes::Field::new("a", DataType::Int64, true)].into());
        RowDecoder::new(
            vec![
                col("device_id", DataType::Utf8, false),
                col("temp", DataType::Float64, true),
                col("n", DataType::Int64, true),
                col("ok", DataType::Boolean, true),
                col("ts", crate::types::TS_TYPE, false),
                col("st", st, true),
            ],
            Some(4),
        )
        .unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]
        /// The fast path changes nothing: the same rows, bit for bit, and the same error rows as
        /// the general path alone.
        #[test]
        fn fast_and_general_paths_agree(payloads in proptest::collection::vec(near_flat_payload(), 1..8)) {
            let (mut fast, mut general) = (every_kind_decoder(), every_kind_decoder());
            for p in &payloads {
                let a = decode_with(&mut fast, p, 7, true);
                let b = decode_with(&mut general, p, 7, false);
                proptest::prop_assert_eq!(a, b, "{}", String::from_utf8_lossy(p));
            }
            proptest::prop_assert_eq!(fast.finish().unwrap(), general.finish().unwrap());
            proptest::prop_assert_eq!(fast.errors.finish().unwrap(), general.errors.finish().unwrap());
        }
    }

    #[test]
    fn the_fast_path_takes_plain_lines_and_leaves_the_rest() {
        let mut d = every_kind_decoder();
        let plain =
            r#"{"device_id":"a","temp":-1.25e1,"n":-42,"ok":true,"ts":"2026-03-01T08:00:00Z","st":null,"x":"y"}"#;
        assert_eq!(super::super::json_flat::decode_flat(&mut d, plain.as_bytes(), 0), Some(1));
        for other in [
            r#"{"device_id":"a\nb","ts":1}"#,
            r#"{"st":{"a":1},"ts":1}"#,
            r#"{"ts":1} x"#,
            r#"[{"ts":1}]"#,
            r#"{"ts":-0}"#,
        ] {
            assert_eq!(super::super::json_flat::decode_flat(&mut d, other.as_bytes(), 0), None, "{other}");
            assert_eq!(d.rows(), 1, "{other}: a row left behind");
        }
        let b = d.finish().unwrap().unwrap();
        assert_eq!(b.column(1).as_primitive::<Float64Type>().value(0), -12.5);
    }

    #[test]
    fn metadata_columns_fill_every_row_of_every_payload_kind() {
        use crate::format::decode::MetaValue;
        let mut cols = decoder().columns().to_vec();
        cols.push(DecodeColumn {
            name: "topic".into(),
            data_type: DataType::Utf8,
            nullable: true,
            metadata_key: Some("topic".into()),
        });
        cols.push(DecodeColumn {
            name: "qos".into(),
            data_type: DataType::Int32,
            nullable: true,
            metadata_key: Some("qos".into()),
        });
        let mut d = RowDecoder::new(cols, Some(2)).unwrap();
        assert_eq!(d.metadata_keys(), vec!["topic", "qos"]);
        let payloads: [(&str, &[u8]); 6] = [
            ("t/1", br#"{"device_id":"a","ts":1}"#),
            ("t/2", br#"[{"device_id":"b","ts":2},{"device_id":"c","ts":3}]"#),
            ("t/3", br#"[]"#),
            ("t/4", b"junk"),
            ("t/5", br#"[{"device_id":"d","ts":4},{"ts":5}]"#),
            ("t/6", br#"{"device_id":"e","ts":6,"topic":"not from the payload"}"#),
        ];
        for (i, (topic, p)) in payloads.iter().enumerate() {
            d.set_meta_text(0, topic);
            d.set_meta(1, MetaValue::Int(i as i64));
            decode_json(&mut d, p, 0);
        }
        let b = d.finish().unwrap().unwrap();
        let topics: Vec<&str> = b.column(3).as_string::<i32>().iter().map(|t| t.unwrap()).collect();
        assert_eq!(topics, vec!["t/1", "t/2", "t/2", "t/5", "t/6"]);
        assert_eq!(d.errors.len(), 2);
    }

    #[test]
    fn objects_arrays_and_bad_rows() {
        let mut d = decoder();
        assert_eq!(
            decode_json(&mut d, br#"{"device_id":"a","temp":1.5,"ts":"2026-03-01T08:00:00Z","x":[1,{"y":2}]}"#, 0),
            1
        );
        assert_eq!(decode_json(&mut d, br#"{"device_id":"b","ts":1000}"#, 0), 1);
        assert_eq!(decode_json(&mut d, br#"{"temp":20.0,"ts":1000}"#, 0), 0);
        assert_eq!(decode_json(&mut d, br#"{"device_id":"c","temp":"hot","ts":1000}"#, 0), 0);
        assert_eq!(decode_json(&mut d, br#"{"device_id":"c","temp":2}"#, 0), 0);
        assert_eq!(decode_json(&mut d, b"not json", 0), 0);
        assert_eq!(decode_json(&mut d, &[0xff, 0xfe, b'{'], 0), 0);
        assert_eq!(
            decode_json(
                &mut d,
                br#"[{"device_id":"d","ts":5},{"device_id":"e","temp":{"a":1},"ts":6},{"device_id":"f","ts":7}]"#,
                0
            ),
            2
        );
        let b = d.finish().unwrap().unwrap();
        assert_eq!(b.num_rows(), 4);
        let ids = b.column(0).as_string::<i32>();
        assert_eq!((0..4).map(|i| ids.value(i)).collect::<Vec<_>>(), ["a", "b", "d", "f"]);
        let temps = b.column(1).as_primitive::<Float64Type>();
        assert_eq!(temps.value(0), 1.5);
        assert!(temps.is_null(1));
        assert_eq!(b.column(2).as_primitive::<TimestampMillisecondType>().value(1), 1000);
        let errs = d.errors.finish().unwrap().unwrap();
        let why = errs.column(1).as_string::<i32>();
        assert_eq!(errs.num_rows(), 6, "{why:?}");
        assert!(why.value(0).contains("'device_id'"), "{}", why.value(0));
        assert!(why.value(1).contains("expected DOUBLE, got string \"hot\""), "{}", why.value(1));
        assert!(why.value(2).contains("event time 'ts' is missing"), "{}", why.value(2));
        assert!(why.value(3).starts_with("not valid JSON"), "{}", why.value(3));
        assert!(why.value(5).contains("expected a scalar, got an object"), "{}", why.value(5));
    }

    #[test]
    fn broken_payload_leaves_no_partial_row() {
        let mut d = decoder();
        decode_json(&mut d, br#"{"device_id":"a","temp":1.0,"ts":1}"#, 0);
        decode_json(&mut d, br#"{"device_id":"x","temp":9.0"#, 0);
        decode_json(&mut d, br#"{"device_id":"b","ts":2,"temp":2.0}"#, 0);
        let b = d.finish().unwrap().unwrap();
        assert_eq!(b.num_rows(), 2);
        for c in b.columns() {
            assert_eq!(c.len(), 2);
        }
        assert_eq!(b.column(1).as_primitive::<Float64Type>().value(1), 2.0);
        assert_eq!(b.column(0).as_string::<i32>().value(1), "b");
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let mut d = decoder();
        decode_json(&mut d, br#"{"device_id":"a","device_id":"bb","ts":1}"#, 0);
        let b = d.finish().unwrap().unwrap();
        assert_eq!(b.column(0).as_string::<i32>().value(0), "bb");
    }

    /// Numbers at the edges of the fast path's exact conversion are rounded as the general path
    /// and Rust's own parser round them (a mantissa past 2^53 converted first would round twice).
    #[test]
    fn the_fast_path_rounds_numbers_as_the_general_path() {
        for n in [
            "9007199254740993.0",
            "9007199254740993e0",
            "900719925474099.35",
            "-9007199254740995.0",
            "1e22",
            "1e23",
            "123456789012345678e-22",
            "0.1",
            "2.675",
            "-0.0",
            "1.7976931348623157e308",
            "5e-324",
        ] {
            let line = format!(r#"{{"device_id":"a","ts":1,"temp":{n}}}"#);
            let (mut fast, mut general) = (every_kind_decoder(), every_kind_decoder());
            assert_eq!(decode_with(&mut fast, line.as_bytes(), 0, true), 1, "{n}");
            assert_eq!(decode_with(&mut general, line.as_bytes(), 0, false), 1, "{n}");
            let value =
                |d: &mut RowDecoder| d.finish().unwrap().unwrap().column(1).as_primitive::<Float64Type>().value(0);
            let (f, g) = (value(&mut fast), value(&mut general));
            assert_eq!(f.to_bits(), g.to_bits(), "{n}: {f} against {g}");
            assert_eq!(f.to_bits(), n.parse::<f64>().unwrap().to_bits(), "{n}");
        }
    }
}
