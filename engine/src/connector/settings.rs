//! Typed connector options, declared once as a struct with [`connector_options!`]: the struct's
//! fields are the options a connector reads, so its list of valid options is derived from the
//! struct (`KEYS`) and never kept by hand, and each value is parsed to its field's type with an
//! error that names the option. Owns the parsing of one option value; never picks defaults or
//! checks options against each other (that is the connector's job, after `read`).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{EngineError, Result};
use crate::sql::ddl::Options;

/// A type an option's text parses to. `Err` completes "option 'key' …" (e.g. "must be a number,
/// not 'x'").
pub trait OptionValue: Sized {
    fn parse_option(text: &str) -> std::result::Result<Self, String>;
}

impl OptionValue for String {
    fn parse_option(text: &str) -> std::result::Result<Self, String> {
        Ok(text.to_string())
    }
}

impl OptionValue for PathBuf {
    fn parse_option(text: &str) -> std::result::Result<Self, String> {
        if text.is_empty() {
            return Err("must be a path, not empty".into());
        }
        Ok(PathBuf::from(text))
    }
}

impl OptionValue for bool {
    fn parse_option(text: &str) -> std::result::Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("must be 'true' or 'false', not '{text}'")),
        }
    }
}

macro_rules! number_option {
    ($($t:ty),*) => {$(
        impl OptionValue for $t {
            fn parse_option(text: &str) -> std::result::Result<Self, String> {
                text.trim().parse::<$t>().map_err(|_| format!("must be a number, not '{text}'"))
            }
        }
    )*};
}
number_option!(u16, u32, u64, usize, i64, f64);

/// '10s', '500 ms', '1 minute'; never negative.
impl OptionValue for Duration {
    fn parse_option(text: &str) -> std::result::Result<Self, String> {
        match crate::sql::ddl::parse_duration_ms(text) {
            Ok(ms) if ms < 0 => Err(format!("must not be negative, not '{text}'")),
            Ok(ms) => Ok(Duration::from_millis(ms as u64)),
            Err(e) => Err(format!("must be a duration such as '10s': {e}")),
        }
    }
}

/// Declares an option whose value is one of a fixed set of words: a `Copy` enum, its
/// [`OptionValue`] (case-insensitive, leading and trailing blanks ignored), `NAMES` (each
/// variant's first spelling, for messages and docs) and `name()`. Further spellings after `|` are
/// accepted aliases, so an error can list exactly the values that parse.
#[macro_export]
macro_rules! option_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        // Not every enum's code needs its names (the parse error lists them in any case).
        #[allow(dead_code)]
        impl $name {
            /// The values, one spelling each, in declaration order.
            $vis const NAMES: &'static [&'static str] = &[$($text),+];

            /// The value's canonical spelling.
            $vis fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl $crate::connector::OptionValue for $name {
            fn parse_option(text: &str) -> ::std::result::Result<Self, ::std::string::String> {
                let t = text.trim();
                $(
                    if t.eq_ignore_ascii_case($text) $(|| t.eq_ignore_ascii_case($alias))* {
                        return ::std::result::Result::Ok($name::$variant);
                    }
                )+
                ::std::result::Result::Err(::std::format!("must be one of {}, not '{text}'", Self::NAMES.join(", ")))
            }
        }
    };
}

/// The lookup for a `read` that takes options from the SQL only (no configured defaults).
pub fn sql_only(options: &Options) -> impl FnMut(&'static str) -> Result<Option<String>> + '_ {
    |key| Ok(options.get(key).map(str::to_string))
}

/// Parses one looked-up option for [`connector_options!`]; an error names `key` and `ctx`.
#[doc(hidden)]
pub fn parse_option_value<T: OptionValue>(ctx: &str, key: &str, text: Option<String>) -> Result<Option<T>> {
    text.map(|t| T::parse_option(&t).map_err(|m| EngineError::options(ctx, format!("option '{key}' {m}")))).transpose()
}

/// Declares a connector's options as a struct of `Option<T>` fields, each bound to its option
/// key. Generates `KEYS` (the keys in declaration order: the connector's valid options) and
/// `read(ctx, lookup)`, which asks `lookup` for each key (the SQL's value, else a configured
/// default) and parses what it returns to the field's type ([`OptionValue`]).
///
/// A field that nothing reads is dead code (a warning, an error under `-D warnings`), so an
/// option cannot be listed as valid and then ignored.
#[macro_export]
macro_rules! connector_options {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $key:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* $vis $field: ::std::option::Option<$ty>, )*
        }

        impl $name {
            /// The options this struct reads, in declaration order.
            $vis const KEYS: &'static [&'static str] = &[$($key),*];

            /// Looks up and parses every option; the first bad one is an error naming it.
            $vis fn read(
                ctx: &str,
                mut lookup: impl FnMut(&'static str) -> $crate::Result<::std::option::Option<::std::string::String>>,
            ) -> $crate::Result<Self> {
                ::std::result::Result::Ok($name {
                    $( $field: $crate::connector::parse_option_value::<$ty>(ctx, $key, lookup($key)?)?, )*
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::option_enum! {
        enum Mode {
            Fast = "fast" | "quick",
            Safe = "safe",
        }
    }

    crate::connector_options! {
        struct Probe {
            mode: Mode = "mode",
            count: usize = "count",
            every: Duration = "every",
            on: bool = "on",
            name: String = "name",
        }
    }

    fn read(pairs: &[(&str, &str)]) -> Result<Probe> {
        Probe::read("source 's'", |k| Ok(pairs.iter().find(|(pk, _)| *pk == k).map(|(_, v)| v.to_string())))
    }

    #[test]
    fn keys_come_from_the_fields_and_values_parse_to_their_types() {
        assert_eq!(Probe::KEYS, &["mode", "count", "every", "on", "name"]);
        let p = read(&[("count", " 12 "), ("every", "1.5s"), ("on", "TRUE")]).unwrap();
        assert_eq!(p.count, Some(12));
        assert_eq!(p.every, Some(Duration::from_millis(1500)));
        assert_eq!(p.on, Some(true));
        assert_eq!(p.name, None);
        assert_eq!(p.mode, None);
    }

    #[test]
    fn an_enum_option_takes_its_names_and_aliases_in_any_case() {
        for (text, want) in [("fast", Mode::Fast), (" QUICK ", Mode::Fast), ("Safe", Mode::Safe)] {
            assert_eq!(read(&[("mode", text)]).unwrap().mode, Some(want), "{text}");
        }
        assert_eq!(Mode::NAMES, &["fast", "safe"]);
        assert_eq!(Mode::Safe.name(), "safe");
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_option_and_the_relation() {
        for (pairs, want) in [
            (&[("count", "ten")][..], "option 'count' must be a number, not 'ten'"),
            (&[("every", "-2s")][..], "option 'every' must not be negative"),
            (&[("every", "5")][..], "option 'every' must be a duration"),
            (&[("on", "yes")][..], "option 'on' must be 'true' or 'false', not 'yes'"),
            (&[("mode", "slow")][..], "option 'mode' must be one of fast, safe, not 'slow'"),
        ] {
            let e = read(pairs).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want) && e.contains("source 's'"), "{e}");
        }
    }
}
