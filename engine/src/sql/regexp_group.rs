//! `regexp_match(s, 'pattern')[k]` with a constant pattern and a constant `k >= 1`, computed as
//! one function that writes the k-th group of each row straight into the result.
//!
//! Why: DataFusion compiles the pattern again for every batch, allocates a `Captures` per row,
//! builds a list of every group of every row, and `[k]` then copies the one element out of that
//! list row by row. Nexmark's q21 spends a fifth of its time there.
//!
//! Owns the rewrite of that one shape ([`rewrite`]) and the function it rewrites to. It must never
//! change a result, only how fast it is made: the pattern is compiled by the same `regex` crate
//! with the same defaults as Arrow's kernel, and the k-th element is taken as `regexp_match` lists
//! them (group 0 alone when the pattern has no groups; otherwise groups 1.. that took part in the
//! match, skipping those that did not). Everything else (flags, a pattern per row, a pattern that
//! does not compile, an index that is not a constant `k >= 1`, differing string types) is left to
//! DataFusion unchanged.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, GenericStringBuilder, StringViewBuilder};
use arrow::datatypes::DataType;
use datafusion_common::tree_node::{Transformed, TreeNode};
use datafusion_common::{DFSchema, DataFusionError, Result, ScalarValue};
use datafusion_expr::expr::ScalarFunction;
use datafusion_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use regex::{CaptureLocations, Regex};

/// Rewrites every `regexp_match(value, 'pattern')[k]` in `e` that this module can compute.
pub fn rewrite(e: Expr, schema: &DFSchema) -> Result<Expr> {
    let out = e.transform_up(|e| {
        let Some(group) = group_call(&e, schema) else {
            return Ok(Transformed::no(e));
        };
        Ok(Transformed::yes(group))
    })?;
    Ok(out.data)
}

/// The call to [`RegexpGroup`] that `e` is, if `e` has the shape this module computes.
fn group_call(e: &Expr, schema: &DFSchema) -> Option<Expr> {
    let Expr::ScalarFunction(element) = e else { return None };
    let [Expr::ScalarFunction(matched), Expr::Literal(ScalarValue::Int64(Some(k)), _)] = element.args.as_slice() else {
        return None;
    };
    if element.func.name() != "array_element" || matched.func.name() != "regexp_match" {
        return None;
    }
    let [value, Expr::Literal(pattern_value, _)] = matched.args.as_slice() else { return None };
    let Some(Some(pattern)) = pattern_value.try_as_str() else { return None };
    let value_type = value.get_type(schema).ok()?;
    // Arrow's kernel refuses a pattern whose string type differs from the values'.
    let string_types = [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];
    if value_type != pattern_value.data_type() || !string_types.contains(&value_type) {
        return None;
    }
    let group = usize::try_from(*k).ok().filter(|k| *k >= 1)?;
    // A pattern that does not compile keeps DataFusion's error, raised when a batch runs.
    let regex = Regex::new(pattern).ok()?;
    let function = RegexpGroup {
        pattern: pattern.to_string(),
        group,
        regex,
        signature: Signature::new(TypeSignature::Uniform(1, string_types.to_vec()), Volatility::Immutable),
    };
    Some(Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(ScalarUDF::new_from_impl(function)),
        vec![value.clone()],
    )))
}

/// The `group`-th element of `regexp_match(value, pattern)`, compiled once.
#[derive(Debug)]
struct RegexpGroup {
    pattern: String,
    /// 1-based, as SQL's `[k]`.
    group: usize,
    regex: Regex,
    signature: Signature,
}

impl PartialEq for RegexpGroup {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.group == other.group
    }
}

impl Eq for RegexpGroup {}

impl Hash for RegexpGroup {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pattern.hash(state);
        self.group.hash(state);
    }
}

impl ScalarUDFImpl for RegexpGroup {
    fn name(&self) -> &str {
        "regexp_match_element"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        arg_types
            .first()
            .cloned()
            .ok_or_else(|| DataFusionError::Internal("regexp_match_element takes one argument".into()))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value] = args.args.as_slice() else {
            return Err(DataFusionError::Internal("regexp_match_element takes one argument".into()));
        };
        // A constant is one row, not `number_rows` copies of it, so the regex runs once.
        let values = match value {
            ColumnarValue::Array(values) => Arc::clone(values),
            ColumnarValue::Scalar(value) => value.to_array()?,
        };
        let groups = self.groups(&values)?;
        match value {
            ColumnarValue::Array(_) => Ok(ColumnarValue::Array(groups)),
            ColumnarValue::Scalar(_) => Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&groups, 0)?)),
        }
    }
}

impl RegexpGroup {
    fn groups(&self, values: &ArrayRef) -> Result<ArrayRef> {
        let mut locations = self.regex.capture_locations();
        let rows = values.len();
        Ok(match values.data_type() {
            DataType::Utf8 => {
                let mut out = GenericStringBuilder::<i32>::with_capacity(rows, 0);
                self.extend_groups(&mut out, values.as_string::<i32>().iter(), &mut locations);
                Arc::new(out.finish())
            }
            DataType::LargeUtf8 => {
                let mut out = GenericStringBuilder::<i64>::with_capacity(rows, 0);
                self.extend_groups(&mut out, values.as_string::<i64>().iter(), &mut locations);
                Arc::new(out.finish())
            }
            DataType::Utf8View => {
                let mut out = StringViewBuilder::with_capacity(rows);
                self.extend_groups(&mut out, values.as_string_view().iter(), &mut locations);
                Arc::new(out.finish())
            }
            other => {
                return Err(DataFusionError::Internal(format!("regexp_match_element of a {other} column")));
            }
        })
    }

    /// Appends to `out` the group of each value (NULL for a NULL value or no group).
    fn extend_groups<'v>(
        &self,
        out: &mut impl Extend<Option<&'v str>>,
        values: impl Iterator<Item = Option<&'v str>>,
        locations: &mut CaptureLocations,
    ) {
        out.extend(values.map(|value| value.and_then(|v| self.group_of(v, locations))));
    }

    /// The `group`-th element `regexp_match` would list for `value`, if there is one.
    fn group_of<'v>(&self, value: &'v str, locations: &mut CaptureLocations) -> Option<&'v str> {
        self.regex.captures_read(locations, value)?;
        let span = if locations.len() == 1 {
            // No groups: the list is the whole match alone.
            (self.group == 1).then(|| locations.get(0)).flatten()?
        } else {
            // Groups that did not take part are left out of the list, so they are not counted.
            (1..locations.len()).filter_map(|i| locations.get(i)).nth(self.group - 1)?
        };
        value.get(span.0..span.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{LargeStringArray, StringArray, StringViewArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion_common::config::ConfigOptions;
    use datafusion_expr::col;
    use datafusion_expr::lit;
    use proptest::prelude::*;

    fn schema(value_type: DataType) -> DFSchema {
        DFSchema::try_from(Schema::new(vec![Field::new("s", value_type, true)])).unwrap()
    }

    /// `regexp_match(s, pattern)[k]` as the SQL front end plans it.
    fn element(pattern: ScalarValue, k: i64) -> Expr {
        let matched = datafusion_functions::regex::regexp_match().call(vec![col("s"), Expr::Literal(pattern, None)]);
        datafusion_functions_nested::extract::array_element_udf().call(vec![matched, lit(k)])
    }

    fn eval(e: &Expr, values: ArrayRef) -> Result<ArrayRef> {
        let schema = schema(values.data_type().clone());
        let physical = datafusion_physical_expr::create_physical_expr(
            e,
            &schema,
            &datafusion_expr::execution_props::ExecutionProps::new(),
            &Default::default(),
        )?;
        let batch = arrow::array::RecordBatch::try_new(Arc::new(schema.as_arrow().clone()), vec![values])?;
        physical.evaluate(&batch)?.into_array(batch.num_rows())
    }

    /// Ours and DataFusion's for `regexp_match(s, pattern)[k]` over `values`, and whether the
    /// rewrite applied.
    fn both(pattern: &str, k: i64, values: ArrayRef) -> (Result<ArrayRef>, Result<ArrayRef>, bool) {
        let pattern = match values.data_type() {
            DataType::LargeUtf8 => ScalarValue::LargeUtf8(Some(pattern.to_string())),
            DataType::Utf8View => ScalarValue::Utf8View(Some(pattern.to_string())),
            _ => ScalarValue::Utf8(Some(pattern.to_string())),
        };
        let theirs = element(pattern, k);
        let ours = rewrite(theirs.clone(), &schema(values.data_type().clone())).unwrap();
        let rewritten = ours != theirs;
        (eval(&ours, values.clone()), eval(&theirs, values), rewritten)
    }

    fn assert_same(pattern: &str, k: i64, values: ArrayRef) {
        match both(pattern, k, values) {
            (Ok(ours), Ok(theirs), _) => assert_eq!(&ours, &theirs, "pattern {pattern:?} [{k}]"),
            (Err(_), Err(_), _) => {}
            (ours, theirs, _) => panic!("pattern {pattern:?} [{k}]: ours {ours:?}, DataFusion's {theirs:?}"),
        }
    }

    fn strings(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    #[test]
    fn nexmark_q21s_channel_id() {
        let values = strings(&[
            Some("https://www.nexmark.com/a/item.htm?query=1&channel_id=42"),
            Some("channel_id=7&x=1"),
            Some("https://www.nexmark.com/a/item.htm?query=1"),
            Some("query=1&channel_id="),
            None,
        ]);
        let (ours, _, rewritten) = both("(&|^)channel_id=([^&]*)", 2, values.clone());
        assert!(rewritten);
        let expected = strings(&[Some("42"), Some("7"), None, Some(""), None]);
        assert_eq!(&ours.unwrap(), &expected);
        assert_same("(&|^)channel_id=([^&]*)", 2, values.clone());
        assert_same("(&|^)channel_id=([^&]*)", 1, values.clone());
        assert_same("(&|^)channel_id=([^&]*)", 3, values);
    }

    #[test]
    fn groups_that_take_no_part_are_not_counted() {
        let values = strings(&[Some("ab"), Some("b"), Some("a"), Some(""), Some("xbx")]);
        for k in 1..=3 {
            assert_same("(a)?(b)", k, values.clone());
            assert_same("(a)|(b)", k, values.clone());
            assert_same("a?b?", k, values.clone());
            assert_same("", k, values.clone());
        }
        let (ours, ..) = both("(a)?(b)", 1, values);
        assert_eq!(&ours.unwrap(), &strings(&[Some("a"), Some("b"), None, None, Some("b")]));
    }

    #[test]
    fn other_shapes_are_left_to_datafusion() {
        let values = strings(&[Some("ab")]);
        for (pattern, k) in [("(a", 1), ("(a)", 0), ("(a)", -1)] {
            let (ours, theirs, rewritten) = both(pattern, k, values.clone());
            assert!(!rewritten, "{pattern:?} [{k}]");
            assert_eq!(ours.is_ok(), theirs.is_ok());
        }
        // A pattern of another string type than the column's.
        let mixed = element(ScalarValue::LargeUtf8(Some("(a)".into())), 1);
        assert_eq!(rewrite(mixed.clone(), &schema(DataType::Utf8)).unwrap(), mixed);
    }

    #[test]
    fn every_string_type_and_constant_values() {
        let rows = [Some("k=1&id=9"), None, Some("id=x")];
        assert_same("(^|&)id=([^&]*)", 2, Arc::new(LargeStringArray::from(rows.to_vec())));
        assert_same("(^|&)id=([^&]*)", 2, Arc::new(StringViewArray::from(rows.to_vec())));
        // A constant argument stays a constant.
        let f = rewrite(element(ScalarValue::Utf8(Some("(b+)".into())), 1), &schema(DataType::Utf8)).unwrap();
        let Expr::ScalarFunction(call) = f else { panic!("not rewritten") };
        let out = call
            .func
            .invoke_with_args(ScalarFunctionArgs {
                args: vec![ColumnarValue::Scalar(ScalarValue::Utf8(Some("abbc".into())))],
                arg_fields: vec![Field::new("s", DataType::Utf8, true).into()],
                number_rows: 3,
                return_field: Field::new("out", DataType::Utf8, true).into(),
                config_options: Arc::new(ConfigOptions::default()),
            })
            .unwrap();
        assert!(matches!(out, ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) if s == "bb"));
    }

    proptest! {
        #[test]
        fn same_element_as_datafusion(
            rows in proptest::collection::vec(proptest::option::of("[ab&=c_]{0,12}"), 0..20),
            pattern in prop::sample::select(vec![
                "(a)?(b)", "(a)|(b)", "(&|^)c=([^&]*)", "a+", "(a*)(b*)(c*)", "((a)|b)+", "", "(?i)A(B)?", "(_)?=",
            ]),
            k in 1i64..5,
        ) {
            let values: Vec<Option<&str>> = rows.iter().map(|r| r.as_deref()).collect();
            assert_same(pattern, k, strings(&values));
        }
    }
}
