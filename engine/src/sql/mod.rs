//! The SQL front end: the pipeline file's statements ([`ddl`]), the names a query can use
//! ([`catalog`]) and the streaming relations planned into DataFusion logical plans ([`tvf`]).

pub mod asof;
pub mod catalog;
pub mod ddl;
pub mod pattern;
pub mod regexp_group;
pub mod rewrite;
pub mod to_char;
pub mod tvf;
