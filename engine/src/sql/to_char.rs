//! `TO_CHAR` / `DATE_FORMAT` of a timestamp column with a constant pattern: the pattern is parsed
//! once per batch and each row is written straight into the result. It replaces DataFusion's
//! function in the catalog; its name, aliases, signature and docs are DataFusion's, and so is every
//! other case (dates, times, durations, a pattern per row, a constant argument, a pattern chrono
//! rejects, a value out of chrono's range), which is handed to DataFusion unchanged.
//!
//! Why: DataFusion formats each row through `NaiveDateTime::format(pattern)`, which parses the
//! pattern again and builds a `String` per row; `GROUP BY DATE_FORMAT(ts, ...)` pays that on every
//! event. The rows are written by the same chrono code, so a result never differs from DataFusion's.
//! Owns no other function; must never change what a result is, only how fast it is made.
//!
//! It also checks constant patterns when a statement is planned ([`check_constant_patterns`]): a
//! pattern chrono rejects would otherwise fail every batch at run time with an Arrow cast error.

use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, PrimitiveArray, StringBuilder};
use arrow::datatypes::{
    DataType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use arrow::temporal_conversions::as_datetime;
use chrono::format::{Item, StrftimeItems};
use chrono::{TimeZone, Utc};
use datafusion_common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion_common::{DataFusionError, Result, ScalarValue};
use datafusion_expr::{
    ColumnarValue, Documentation, Expr, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// `to_char` (alias `date_format`), wrapping DataFusion's definition.
pub fn to_char_function() -> Arc<ScalarUDF> {
    let inner = datafusion_functions::datetime::to_char();
    Arc::new(ScalarUDF::new_from_impl(ToCharParsedOnce { inner }))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ToCharParsedOnce {
    inner: Arc<ScalarUDF>,
}

impl ScalarUDFImpl for ToCharParsedOnce {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let [ColumnarValue::Array(values), ColumnarValue::Scalar(ScalarValue::Utf8(Some(pattern)))] =
            args.args.as_slice()
        {
            if let Some(formatted) = format_timestamps(values, pattern) {
                return Ok(ColumnarValue::Array(formatted));
            }
        }
        self.inner.invoke_with_args(args)
    }
}

/// Fails with a plan error naming the pattern when a `to_char` / `date_format` anywhere in `plan`
/// (subqueries included) has a constant pattern that chrono cannot parse.
pub fn check_constant_patterns(plan: &LogicalPlan) -> Result<()> {
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(call) = e {
                    if call.func.name() == "to_char" {
                        if let Some(Expr::Literal(pattern, _)) = call.args.get(1) {
                            if let Some(Some(pattern)) = pattern.try_as_str() {
                                check_pattern(pattern)?;
                            }
                        }
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(())
}

fn check_pattern(pattern: &str) -> Result<()> {
    if StrftimeItems::new(pattern).parse().is_err() {
        return Err(DataFusionError::Plan(format!(
            "to_char: '{pattern}' is not a valid pattern; use strftime specifiers such as %Y-%m-%d %H:%M:%S%.3f"
        )));
    }
    Ok(())
}

/// The formatted rows of a timestamp array, or `None` for anything this module leaves to
/// DataFusion (not a timestamp, a pattern or zone that does not parse, a row chrono cannot write).
fn format_timestamps(values: &ArrayRef, pattern: &str) -> Option<ArrayRef> {
    let DataType::Timestamp(unit, zone) = values.data_type() else {
        return None;
    };
    let items = StrftimeItems::new(pattern).parse().ok()?;
    let zone: Option<Tz> = match zone {
        Some(name) => Some(name.parse().ok()?),
        None => None,
    };
    // Patterns usually grow a little when written (`%Y` is four digits), as DataFusion sizes it.
    let row_bytes = pattern.len() + 10;
    let formatted = match unit {
        TimeUnit::Second => format_rows(values.as_primitive::<TimestampSecondType>(), &items, zone, row_bytes),
        TimeUnit::Millisecond => {
            format_rows(values.as_primitive::<TimestampMillisecondType>(), &items, zone, row_bytes)
        }
        TimeUnit::Microsecond => {
            format_rows(values.as_primitive::<TimestampMicrosecondType>(), &items, zone, row_bytes)
        }
        TimeUnit::Nanosecond => format_rows(values.as_primitive::<TimestampNanosecondType>(), &items, zone, row_bytes),
    }?;
    Some(Arc::new(formatted))
}

fn format_rows<T: ArrowPrimitiveType<Native = i64>>(
    values: &PrimitiveArray<T>,
    items: &[Item<'_>],
    zone: Option<Tz>,
    row_bytes: usize,
) -> Option<arrow::array::StringArray> {
    let mut out = StringBuilder::with_capacity(values.len(), values.len().saturating_mul(row_bytes));
    for row in 0..values.len() {
        if values.is_null(row) {
            out.append_null();
            continue;
        }
        let naive = as_datetime::<T>(values.value(row))?;
        // The row is written into the builder's value buffer and committed by `append_value("")`;
        // a failed write abandons the whole builder, so no partial row is ever committed.
        let written = match &zone {
            Some(zone) => {
                Utc.from_utc_datetime(&naive).with_timezone(zone).format_with_items(items.iter()).write_to(&mut out)
            }
            None => naive.format_with_items(items.iter()).write_to(&mut out),
        };
        written.ok()?;
        out.append_value("");
    }
    Some(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, TimestampMillisecondArray};
    use arrow::datatypes::Field;
    use datafusion_common::config::ConfigOptions;
    use proptest::prelude::*;

    fn call(f: &ScalarUDF, values: ColumnarValue, pattern: ColumnarValue, rows: usize) -> Result<ColumnarValue> {
        let arg_fields =
            vec![Field::new("v", values.data_type(), true).into(), Field::new("p", pattern.data_type(), true).into()];
        f.invoke_with_args(ScalarFunctionArgs {
            args: vec![values, pattern],
            arg_fields,
            number_rows: rows,
            return_field: Field::new("out", DataType::Utf8, true).into(),
            config_options: Arc::new(ConfigOptions::default()),
        })
    }

    fn as_strings(value: ColumnarValue) -> Vec<Option<String>> {
        match value {
            ColumnarValue::Array(a) => a.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect(),
            ColumnarValue::Scalar(ScalarValue::Utf8(s)) => vec![s],
            other => panic!("to_char returned {other:?}"),
        }
    }

    /// The strings of one call, or its error.
    type Strings = Result<Vec<Option<String>>>;

    /// Ours and DataFusion's on the same arguments.
    fn outputs(values: ColumnarValue, pattern: &str, rows: usize) -> (Strings, Strings) {
        let pattern = ColumnarValue::Scalar(ScalarValue::Utf8(Some(pattern.to_string())));
        let ours = call(&to_char_function(), values.clone(), pattern.clone(), rows).map(as_strings);
        let theirs = call(&datafusion_functions::datetime::to_char(), values, pattern, rows).map(as_strings);
        (ours, theirs)
    }

    fn assert_same(values: ColumnarValue, pattern: &str, rows: usize) {
        match outputs(values, pattern, rows) {
            (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "pattern {pattern:?}"),
            (Err(_), Err(_)) => {}
            (ours, theirs) => panic!("pattern {pattern:?}: ours {ours:?}, DataFusion's {theirs:?}"),
        }
    }

    #[test]
    fn replaces_datafusion_under_both_names() {
        let f = to_char_function();
        assert_eq!(f.name(), "to_char");
        assert_eq!(f.aliases(), ["date_format".to_string()]);
    }

    #[test]
    fn a_day_and_a_minute_of_millisecond_timestamps() {
        // 2024-02-29T23:59:30.250Z, null, 1969-12-31T23:59:59.999Z.
        let values = TimestampMillisecondArray::from(vec![Some(1_709_251_170_250), None, Some(-1)]);
        let values = ColumnarValue::Array(Arc::new(values));
        let (day, _) = outputs(values.clone(), "%Y-%m-%d", 3);
        assert_eq!(day.unwrap(), [Some("2024-02-29".into()), None, Some("1969-12-31".into())]);
        let (minute, _) = outputs(values, "%H:%M", 3);
        assert_eq!(minute.unwrap(), [Some("23:59".into()), None, Some("23:59".into())]);
    }

    #[test]
    fn a_zone_moves_the_day() {
        let values = TimestampMillisecondArray::from(vec![1_709_251_170_250]).with_timezone("+02:00");
        let (day, _) = outputs(ColumnarValue::Array(Arc::new(values)), "%Y-%m-%d %H:%M %z", 1);
        assert_eq!(day.unwrap(), [Some("2024-03-01 01:59 +0200".into())]);
    }

    #[test]
    fn a_bad_pattern_is_datafusions_error() {
        let values = ColumnarValue::Array(Arc::new(TimestampMillisecondArray::from(vec![0])));
        let (ours, theirs) = outputs(values, "%Y-%Q", 1);
        assert_eq!(ours.unwrap_err().to_string(), theirs.unwrap_err().to_string());
    }

    #[test]
    fn a_constant_pattern_is_checked_when_planned() {
        for good in ["%Y-%m-%d", "%H:%M:%S%.3f", "%%literal%%", "no specifiers", ""] {
            assert!(check_pattern(good).is_ok(), "{good:?}");
        }
        for bad in ["%Y-%Q", "%", "%Y %"] {
            let message = check_pattern(bad).unwrap_err().to_string();
            assert!(message.contains(&format!("'{bad}' is not a valid pattern")), "{message}");
        }
    }

    #[test]
    fn a_pattern_per_row_and_a_constant_value_are_datafusions() {
        let values = ColumnarValue::Array(Arc::new(TimestampMillisecondArray::from(vec![0, 86_400_000])));
        let patterns = ColumnarValue::Array(Arc::new(StringArray::from(vec!["%Y", "%d"])));
        let ours = call(&to_char_function(), values.clone(), patterns.clone(), 2).map(as_strings).unwrap();
        assert_eq!(ours, [Some("1970".into()), Some("02".into())]);
        let constant = ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(Some(0), None));
        assert_same(constant, "%Y-%m-%d", 1);
    }

    fn timestamps() -> impl Strategy<Value = (ArrayRef, usize)> {
        // Shifts from 8 to 49 bits reach both ends: values beyond chrono's years for seconds and
        // milliseconds, and nanoseconds within a day of 1970.
        let value = (any::<i64>(), 8..50u32).prop_map(|(v, shift)| v >> shift);
        let rows = prop::collection::vec(prop::option::weighted(0.9, value), 0..40);
        let zone = prop::sample::select(vec![None, Some("UTC"), Some("+05:30"), Some("-08:00"), Some("Europe/Berlin")]);
        (rows, 0..4u8, zone).prop_map(|(rows, unit, zone)| {
            let n = rows.len();
            let array: ArrayRef = match unit {
                0 => Arc::new(PrimitiveArray::<TimestampSecondType>::from(rows).with_timezone_opt(zone)),
                1 => Arc::new(PrimitiveArray::<TimestampMillisecondType>::from(rows).with_timezone_opt(zone)),
                2 => Arc::new(PrimitiveArray::<TimestampMicrosecondType>::from(rows).with_timezone_opt(zone)),
                _ => Arc::new(PrimitiveArray::<TimestampNanosecondType>::from(rows).with_timezone_opt(zone)),
            };
            (array, n)
        })
    }

    fn patterns() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "%Y", "%m", "%d", "%H", "%M", "%S", "%.3f", "%f", "%j", "%a", "%b", "%e", "%z", "%:z", "%Z", "%s", "%F",
            "%T", "%%", "-", " ", "T", "day ", "%Q", "%", "%-d",
        ]);
        prop::collection::vec(pieces, 0..6).prop_map(|p| p.concat())
    }

    proptest! {
        /// Any timestamp array, unit, zone and pattern (including ones chrono rejects) gives what
        /// DataFusion's own `to_char` gives, or an error where it gives one.
        #[test]
        fn equals_datafusion((values, rows) in timestamps(), pattern in patterns()) {
            assert_same(ColumnarValue::Array(values), &pattern, rows);
        }
    }
}
