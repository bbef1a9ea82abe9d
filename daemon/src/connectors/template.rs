//! Templates over a sink's output columns (`alerts/{device_id}`), for MQTT topics and Kafka topics.
//! Owns the template syntax and the cleaning of values into names; reads values only through the
//! engine's [`SinkRow`]; never decides what a valid topic is for a protocol beyond the
//! [`NameRules`] it is given.

use eddy_engine::connector::SinkRow;

/// What a protocol accepts in a name made from a template.
#[derive(Debug, Clone, Copy)]
pub struct NameRules {
    /// Characters a value may not bring into a name; each is replaced by `_`.
    pub forbidden_in_values: fn(char) -> bool,
    /// Checks the template's literal text (`Err`: why not).
    pub check_literal: fn(&str) -> Result<(), String>,
}

/// A template: literal text and `{column}` placeholders.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
    rules: NameRules,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    /// An output column, by position.
    Column(usize),
}

impl Template {
    /// Parses `template`, checking that every placeholder names an output column.
    pub fn parse(template: &str, columns: &[String], rules: NameRules) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close =
                rest[open..].find('}').ok_or_else(|| format!("topic '{template}': a '{{' is not closed"))? + open;
            let col = rest[open + 1..close].trim();
            let at = columns.iter().position(|c| c == col).ok_or_else(|| {
                format!("topic '{template}': '{{{col}}}' is not an output column ({})", columns.join(", "))
            })?;
            parts.push(Part::Column(at));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if template.is_empty() {
            return Err("a topic template may not be empty".into());
        }
        for p in &parts {
            if let Part::Text(t) = p {
                (rules.check_literal)(t).map_err(|why| format!("topic '{template}': {why}"))?;
            }
        }
        Ok(Template { parts, rules })
    }

    /// The text of a template without placeholders.
    pub fn constant(&self) -> Option<String> {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Column(_) => None,
            })
            .collect::<Option<String>>()
    }

    /// Writes the name for one output row into `out` (cleared first). Characters the rules forbid
    /// are replaced by `_`; a NULL value gives `null`.
    pub fn render_into(&self, row: &SinkRow<'_>, out: &mut String) {
        out.clear();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Column(c) => {
                    let start = out.len();
                    if !row.write_text(*c, out) {
                        out.push_str("null");
                    }
                    if out[start..].contains(self.rules.forbidden_in_values) {
                        let clean: String = out[start..]
                            .chars()
                            .map(|ch| if (self.rules.forbidden_in_values)(ch) { '_' } else { ch })
                            .collect();
                        out.truncate(start);
                        out.push_str(&clean);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MQTT_LIKE: NameRules = NameRules {
        forbidden_in_values: |c| matches!(c, '+' | '#' | '\0'),
        check_literal: |t| if t.contains(['+', '#']) { Err("no wildcards".into()) } else { Ok(()) },
    };

    fn render(t: &Template, row: &str) -> String {
        let line = format!("{row}\n");
        let rows = eddy_engine::connector::SinkRows::from_lines(line.as_bytes());
        let mut out = String::new();
        t.render_into(&rows.iter().next().unwrap().unwrap(), &mut out);
        out
    }

    #[test]
    fn templates_fill_values_and_clean_forbidden_characters() {
        let cols = vec!["device_id".to_string(), "n".to_string()];
        let t = Template::parse("alerts/{device_id}/n", &cols, MQTT_LIKE).unwrap();
        assert_eq!(render(&t, r#"{"device_id":"pump-1","n":3}"#), "alerts/pump-1/n");
        assert_eq!(render(&t, r#"{"device_id":"a+b#","n":3}"#), "alerts/a_b_/n");
        assert_eq!(render(&t, r#"{"device_id":null,"n":1}"#), "alerts/null/n");
        let n = Template::parse("n/{n}", &cols, MQTT_LIKE).unwrap();
        assert_eq!(render(&n, r#"{"device_id":"x","n":3}"#), "n/3");
        assert!(t.constant().is_none());
        assert_eq!(Template::parse("fixed", &cols, MQTT_LIKE).unwrap().constant().as_deref(), Some("fixed"));
        assert!(Template::parse("a/{nope}", &cols, MQTT_LIKE).unwrap_err().contains("not an output column"));
        assert!(Template::parse("a/{n", &cols, MQTT_LIKE).unwrap_err().contains("not closed"));
        assert!(Template::parse("a/#", &cols, MQTT_LIKE).unwrap_err().contains("wildcards"));
        assert!(Template::parse("", &cols, MQTT_LIKE).is_err());
    }
}
