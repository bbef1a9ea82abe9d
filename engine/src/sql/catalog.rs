//! What the SQL front end can name: the pipeline's relations and DataFusion's functions.
//!
//! [`Catalog`] is the `ContextProvider` DataFusion's planner asks; relations appear to it as
//! [`RelationSource`]s, which carry only a schema and what the relation is. It plans nothing itself.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion_common::config::ConfigOptions;
use datafusion_common::{plan_err, Result as DfResult, TableReference};
use datafusion_expr::planner::{ContextProvider, ExprPlanner, RelationPlanner};
use datafusion_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};

/// What a name in a query refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelationKind {
    /// Accepted rows of a source.
    Source,
    /// A reference table (lookup joins).
    Table,
    /// A materialized view.
    View,
    /// `LATE(source)`: rows the lateness rule rejected.
    Late(String),
    /// `ERRORS(source)`: rows that failed to decode.
    Errors(String),
}

/// A relation as the SQL planner sees it.
#[derive(Debug)]
pub struct RelationSource {
    pub name: String,
    pub kind: RelationKind,
    pub schema: SchemaRef,
    /// PRIMARY KEY columns (tables).
    pub primary_key: Vec<usize>,
}

impl TableSource for RelationSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// Names a query can use, for one planning pass.
pub struct Catalog {
    relations: HashMap<String, Arc<RelationSource>>,
    scalar: HashMap<String, Arc<ScalarUDF>>,
    aggregate: HashMap<String, Arc<AggregateUDF>>,
    window: HashMap<String, Arc<WindowUDF>>,
    options: ConfigOptions,
    expr_planners: Vec<Arc<dyn ExprPlanner>>,
    relation_planners: Vec<Arc<dyn RelationPlanner>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("relations", &self.relations.keys().collect::<Vec<_>>()).finish()
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl Catalog {
    pub fn new() -> Self {
        let mut scalar = HashMap::new();
        // `to_char` is replaced by one that parses a constant pattern once per batch.
        for f in datafusion_functions::all_default_functions()
            .into_iter()
            .chain(datafusion_functions_nested::all_default_nested_functions())
            .chain([super::to_char::to_char_function()])
        {
            for a in f.aliases() {
                scalar.insert(a.clone(), f.clone());
            }
            scalar.insert(f.name().to_string(), f);
        }
        let mut aggregate = HashMap::new();
        // The variance family is replaced by versions whose checkpoint restore is exact.
        let defaults = datafusion_functions_aggregate::all_default_aggregate_functions();
        for f in defaults.into_iter().chain(crate::ops::variance::exact_variance_functions()) {
            for a in f.aliases() {
                aggregate.insert(a.clone(), f.clone());
            }
            aggregate.insert(f.name().to_string(), f);
        }
        let mut window = HashMap::new();
        for f in datafusion_functions_window::all_default_window_functions() {
            for a in f.aliases() {
                window.insert(a.clone(), f.clone());
            }
            window.insert(f.name().to_string(), f);
        }
        let expr_planners: Vec<Arc<dyn ExprPlanner>> = vec![
            Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
            Arc::new(datafusion_functions_nested::planner::NestedFunctionPlanner),
            Arc::new(datafusion_functions_nested::planner::FieldAccessPlanner),
            Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
            Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
            Arc::new(datafusion_functions_aggregate::planner::AggregateFunctionPlanner),
            Arc::new(datafusion_functions_window::planner::WindowFunctionPlanner),
        ];
        let mut options = ConfigOptions::default();
        options.sql_parser.enable_ident_normalization = true;
        // Errors then point at the column or function they are about, not only the statement.
        options.sql_parser.collect_spans = true;
        Catalog {
            relations: HashMap::new(),
            scalar,
            aggregate,
            window,
            options,
            expr_planners,
            relation_planners: vec![Arc::new(super::tvf::StreamingRelationPlanner)],
        }
    }

    pub fn add(&mut self, name: &str, kind: RelationKind, schema: SchemaRef) {
        self.add_keyed(name, kind, schema, vec![]);
    }

    pub fn add_keyed(&mut self, name: &str, kind: RelationKind, schema: SchemaRef, primary_key: Vec<usize>) {
        let source = Arc::new(RelationSource { name: name.to_string(), kind, schema, primary_key });
        self.relations.insert(name.to_string(), source);
    }

    pub fn relation(&self, name: &str) -> Option<&Arc<RelationSource>> {
        self.relations.get(name)
    }

    pub fn options(&self) -> &ConfigOptions {
        &self.options
    }
}

impl ContextProvider for Catalog {
    fn get_table_source(&self, name: TableReference) -> DfResult<Arc<dyn TableSource>> {
        match self.relations.get(name.table()) {
            // LATE(x) / ERRORS(x) are registered as `late(x)` / `errors(x)`, names no identifier can spell.
            Some(r) => Ok(r.clone() as Arc<dyn TableSource>),
            _ => {
                let mut known: Vec<&str> = self
                    .relations
                    .values()
                    .filter(|r| matches!(r.kind, RelationKind::Source | RelationKind::Table | RelationKind::View))
                    .map(|r| r.name.as_str())
                    .collect();
                known.sort();
                plan_err!(
                    "unknown relation '{}' (known: {})",
                    name.table(),
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )
            }
        }
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.expr_planners
    }

    fn get_relation_planners(&self) -> &[Arc<dyn RelationPlanner>] {
        &self.relation_planners
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.scalar.get(name).cloned()
    }

    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.aggregate.get(name).cloned()
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.window.get(name).cloned()
    }

    fn get_variable_type(&self, _names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        &self.options
    }

    fn udf_names(&self) -> Vec<String> {
        self.scalar.keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        vec![]
    }

    fn udaf_names(&self) -> Vec<String> {
        self.aggregate.keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        self.window.keys().cloned().collect()
    }
}
