//! The pipeline file: statements separated by `;`, parsed into the streaming DDL of the dialect.
//!
//! sqlparser tokenizes the whole file once (so every position is file-relative) and parses queries,
//! types and expressions; this module parses the statements sqlparser does not know (`CREATE SOURCE`,
//! `CREATE SINK`, `WATERMARK FOR`, `METADATA FROM`, `EMIT`, `WITH (...)` options) around them.
//! It must never plan or run anything.

use datafusion_sql::sqlparser::ast::{DataType as SqlType, Expr as SqlExpr, Query};
use datafusion_sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Word};

use crate::error::{EngineError, Result, SqlPos};

/// The SQL dialect used for pipelines.
pub fn dialect() -> &'static dyn Dialect {
    &GenericDialect {}
}

#[derive(Debug, Clone)]
pub struct ColumnDef {
    pub name: String,
    pub sql_type: SqlType,
    pub not_null: bool,
    pub primary_key: bool,
    pub metadata_key: Option<String>,
    pub pos: SqlPos,
}

#[derive(Debug, Clone)]
pub struct WatermarkDef {
    pub column: String,
    pub expr: SqlExpr,
    pub pos: SqlPos,
}

/// A `WITH (key = 'value', ...)` list, keys lower-cased, in written order.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub entries: Vec<(String, String, SqlPos)>,
}

impl Options {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().rev().find(|(k, _, _)| k == key).map(|(_, v, _)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    OnWindowClose,
    OnUpdate,
    /// Partial results every this many milliseconds of event time, then the final row.
    Every(i64),
}

#[derive(Debug, Clone)]
pub struct RelationDef {
    pub name: String,
    pub columns: Vec<ColumnDef>,
    pub watermark: Option<WatermarkDef>,
    pub primary_key: Vec<String>,
    pub options: Options,
}

#[derive(Debug, Clone)]
pub enum SinkInput {
    Relation(String),
    Query { query: Box<Query>, emit: Option<Emit> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Source,
    Table,
    View,
    Sink,
}

impl ObjectKind {
    pub fn sql(&self) -> &'static str {
        match self {
            ObjectKind::Source => "SOURCE",
            ObjectKind::Table => "TABLE",
            ObjectKind::View => "MATERIALIZED VIEW",
            ObjectKind::Sink => "SINK",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Statement {
    CreateSource(RelationDef),
    CreateTable(RelationDef),
    CreateView { name: String, query: Box<Query>, emit: Option<Emit> },
    CreateSink { name: String, input: SinkInput, options: Options },
    Drop { kind: ObjectKind, name: String, if_exists: bool },
}

#[derive(Debug, Clone)]
pub struct PositionedStatement {
    pub pos: SqlPos,
    pub statement: Statement,
}

fn pos_of(statement: usize, loc: Location) -> SqlPos {
    SqlPos { statement, line: loc.line, column: loc.column }
}

/// Parses a whole pipeline file.
pub fn parse_pipeline(sql: &str) -> Result<Vec<PositionedStatement>> {
    let tokens = Tokenizer::new(dialect(), sql).tokenize_with_location().map_err(|e| EngineError::Sql {
        pos: SqlPos {
            statement: 1 + count_statements_before(sql, e.location),
            line: e.location.line,
            column: e.location.column,
        },
        message: e.message,
    })?;
    let mut out = Vec::new();
    let mut current: Vec<TokenWithSpan> = Vec::new();
    let mut index = 0;
    for t in tokens.into_iter().chain(std::iter::once(TokenWithSpan::new_eof())) {
        let end = matches!(t.token, Token::SemiColon | Token::EOF);
        if !end {
            current.push(t);
            continue;
        }
        if current.iter().any(|t| !is_trivia(&t.token)) {
            index += 1;
            out.push(parse_statement(index, std::mem::take(&mut current))?);
        }
        current.clear();
    }
    Ok(out)
}

/// Parses one query on its own (an on-demand query over views' current rows): `SELECT …`, with
/// an optional trailing `;`. EMIT has no meaning there and is refused.
pub fn parse_query(sql: &str) -> Result<Box<Query>> {
    let tokens = Tokenizer::new(dialect(), sql).tokenize_with_location().map_err(|e| EngineError::Sql {
        pos: SqlPos { statement: 1, line: e.location.line, column: e.location.column },
        message: e.message,
    })?;
    let mut tokens: Vec<TokenWithSpan> = tokens.into_iter().filter(|t| !is_trivia(&t.token)).collect();
    if tokens.last().is_some_and(|t| t.token == Token::SemiColon) {
        tokens.pop();
    }
    if let Some(t) = tokens.iter().find(|t| t.token == Token::SemiColon) {
        return Err(EngineError::Sql {
            pos: pos_of(1, t.span.start),
            message: "one query at a time: remove what follows the ';'".into(),
        });
    }
    let (query, emit) = parse_query_and_emit(1, tokens)?;
    if emit.is_some() {
        return Err(EngineError::Sql {
            pos: SqlPos { statement: 1, line: 1, column: 1 },
            message: "EMIT applies to continuous queries; a one-off query answers once".into(),
        });
    }
    Ok(query)
}

/// Statement number of a tokenizer error: the `;` before it, counted roughly (only for messages).
fn count_statements_before(sql: &str, loc: Location) -> usize {
    sql.lines().take(loc.line.saturating_sub(1) as usize).map(|l| l.matches(';').count()).sum()
}

fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

/// A parser over a slice of the file's tokens, reporting errors with statement positions.
struct StmtParser<'a> {
    index: usize,
    parser: Parser<'a>,
    /// Location of the statement's first token, for errors that have no token.
    start: Location,
}

impl<'a> StmtParser<'a> {
    fn new(index: usize, tokens: Vec<TokenWithSpan>) -> Self {
        let start = tokens.iter().find(|t| !is_trivia(&t.token)).map(|t| t.span.start).unwrap_or(Location::new(1, 1));
        StmtParser { index, parser: Parser::new(dialect()).with_tokens_with_locations(tokens), start }
    }

    fn here(&self) -> SqlPos {
        let t = self.parser.peek_token();
        if t.token == Token::EOF {
            return pos_of(self.index, self.start);
        }
        pos_of(self.index, t.span.start)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T> {
        Err(EngineError::Sql { pos: self.here(), message: message.into() })
    }

    fn wrap<T>(&self, r: std::result::Result<T, ParserError>) -> Result<T> {
        r.map_err(|e| {
            let text = match e {
                ParserError::ParserError(s) | ParserError::TokenizerError(s) => s,
                ParserError::RecursionLimitExceeded => "statement nests too deeply".into(),
            };
            // sqlparser appends " at Line: l, Column: c"; keep its position when it gives one.
            let (message, pos) = split_location(&text, self.index).unwrap_or((text.clone(), self.here()));
            EngineError::Sql { pos, message }
        })
    }

    fn keyword(&mut self, k: Keyword) -> bool {
        self.parser.parse_keyword(k)
    }

    fn word(&mut self, w: &str) -> bool {
        if let Token::Word(word) = self.parser.peek_token().token {
            if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w) {
                self.parser.next_token();
                return true;
            }
        }
        false
    }

    fn expect_word(&mut self, w: &str) -> Result<()> {
        if self.word(w) {
            return Ok(());
        }
        let found = self.parser.peek_token().token.to_string();
        self.err(format!("expected {w}, found {}", if found == "EOF" { "end of statement".into() } else { found }))
    }

    fn ident(&mut self, what: &str) -> Result<String> {
        match self.parser.peek_token().token {
            Token::Word(w) => {
                self.parser.next_token();
                Ok(normalize(&w))
            }
            other => self.err(format!("expected {what}, found {}", describe(&other))),
        }
    }

    fn expect(&mut self, t: Token) -> Result<()> {
        let found = self.parser.peek_token().token;
        if found == t {
            self.parser.next_token();
            Ok(())
        } else {
            self.err(format!("expected {t}, found {}", describe(&found)))
        }
    }

    fn at_end(&self) -> bool {
        self.parser.peek_token().token == Token::EOF
    }

    fn expect_end(&self) -> Result<()> {
        if self.at_end() {
            Ok(())
        } else {
            self.err(format!("expected end of statement, found {}", describe(&self.parser.peek_token().token)))
        }
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::EOF => "end of statement".into(),
        other => format!("'{other}'"),
    }
}

fn split_location(text: &str, index: usize) -> Option<(String, SqlPos)> {
    let at = text.rfind(" at Line: ")?;
    let rest = &text[at + " at Line: ".len()..];
    let (line, col) = rest.split_once(", Column: ")?;
    let line: u64 = line.trim().parse().ok()?;
    let column: u64 = col.trim().parse().ok()?;
    Some((text[..at].trim_start_matches("sql parser error: ").to_string(), SqlPos { statement: index, line, column }))
}

/// Unquoted identifiers fold to lower case (as DataFusion does); quoted ones keep their spelling.
pub fn normalize(w: &Word) -> String {
    if w.quote_style.is_some() {
        w.value.clone()
    } else {
        w.value.to_ascii_lowercase()
    }
}

fn parse_statement(index: usize, tokens: Vec<TokenWithSpan>) -> Result<PositionedStatement> {
    let start = tokens.iter().find(|t| !is_trivia(&t.token)).map(|t| t.span.start).unwrap_or(Location::new(1, 1));
    let pos = pos_of(index, start);
    // Split off a trailing `WITH ( ... )` and an `EMIT ...` clause at nesting depth 0.
    let (body, with_tokens) = split_trailing_with(tokens);
    let mut p = StmtParser::new(index, body.clone());
    let statement = if p.keyword(Keyword::CREATE) {
        if p.word("SOURCE") {
            Statement::CreateSource(parse_relation(&mut p, with_tokens, index, true)?)
        } else if p.keyword(Keyword::TABLE) {
            Statement::CreateTable(parse_relation(&mut p, with_tokens, index, false)?)
        } else if p.keyword(Keyword::MATERIALIZED) {
            p.expect_word("VIEW")?;
            let name = p.ident("a view name")?;
            p.expect_word("AS")?;
            if let Some(w) = with_tokens {
                return Err(EngineError::Sql {
                    pos: first_pos(index, &w).unwrap_or(pos),
                    message: "a MATERIALIZED VIEW takes no WITH options".into(),
                });
            }
            let (query, emit) = parse_query_and_emit(index, rest_tokens(&p, body))?;
            Statement::CreateView { name, query, emit }
        } else if p.word("SINK") {
            let name = p.ident("a sink name")?;
            let Some(with_tokens) = with_tokens else {
                return p.err("a SINK needs WITH (connector = '...', ...) at its end");
            };
            let options = parse_options(index, with_tokens)?;
            let input = if p.keyword(Keyword::FROM) {
                let rel = p.ident("a relation name")?;
                p.expect_end()?;
                SinkInput::Relation(rel)
            } else if p.word("AS") {
                let (query, emit) = parse_query_and_emit(index, rest_tokens(&p, body))?;
                SinkInput::Query { query, emit }
            } else {
                return p.err(format!("expected FROM or AS, found {}", describe(&p.parser.peek_token().token)));
            };
            Statement::CreateSink { name, input, options }
        } else {
            return p.err(format!(
                "expected SOURCE, TABLE, MATERIALIZED VIEW or SINK after CREATE, found {}",
                describe(&p.parser.peek_token().token)
            ));
        }
    } else if p.keyword(Keyword::DROP) {
        let kind = if p.word("SOURCE") {
            ObjectKind::Source
        } else if p.keyword(Keyword::TABLE) {
            ObjectKind::Table
        } else if p.keyword(Keyword::MATERIALIZED) {
            p.expect_word("VIEW")?;
            ObjectKind::View
        } else if p.word("SINK") {
            ObjectKind::Sink
        } else {
            return p.err("expected SOURCE, TABLE, MATERIALIZED VIEW or SINK after DROP");
        };
        let if_exists = p.keyword(Keyword::IF) && {
            p.expect_word("EXISTS")?;
            true
        };
        let name = p.ident("a name")?;
        p.expect_end()?;
        if with_tokens.is_some() {
            return Err(EngineError::Sql { pos, message: "DROP takes no WITH options".into() });
        }
        Statement::Drop { kind, name, if_exists }
    } else {
        return p.err(format!(
            "expected CREATE or DROP, found {} (a pipeline holds CREATE SOURCE / TABLE / MATERIALIZED VIEW / SINK and DROP statements)",
            describe(&p.parser.peek_token().token)
        ));
    };
    Ok(PositionedStatement { pos, statement })
}

fn first_pos(index: usize, tokens: &[TokenWithSpan]) -> Option<SqlPos> {
    tokens.iter().find(|t| !is_trivia(&t.token)).map(|t| pos_of(index, t.span.start))
}

/// Tokens from the parser's position to the end of `body`.
fn rest_tokens(p: &StmtParser<'_>, body: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let i = p.parser.index();
    body.into_iter().skip(i).collect()
}

/// Splits `... WITH ( ... )` at the end of a statement (depth 0) from the rest.
fn split_trailing_with(tokens: Vec<TokenWithSpan>) -> (Vec<TokenWithSpan>, Option<Vec<TokenWithSpan>>) {
    let sig: Vec<usize> = (0..tokens.len()).filter(|&i| !is_trivia(&tokens[i].token)).collect();
    let Some(&last) = sig.last() else { return (tokens, None) };
    if tokens[last].token != Token::RParen {
        return (tokens, None);
    }
    // Find the matching '('.
    let mut depth = 0i32;
    let mut open = None;
    for &i in sig.iter().rev() {
        match tokens[i].token {
            Token::RParen => depth += 1,
            Token::LParen => {
                depth -= 1;
                if depth == 0 {
                    open = Some(i);
                    break;
                }
            }
            _ => {}
        }
    }
    let Some(open) = open else { return (tokens, None) };
    let Some(k) = sig.iter().position(|&i| i == open) else { return (tokens, None) };
    if k == 0 {
        return (tokens, None);
    }
    let with_at = sig[k - 1];
    let is_with =
        matches!(&tokens[with_at].token, Token::Word(w) if w.keyword == Keyword::WITH && w.quote_style.is_none());
    if !is_with {
        return (tokens, None);
    }
    let mut body = tokens;
    let with = body.split_off(with_at);
    (body, Some(with))
}

/// Parses `<query> [EMIT ...]` from the given tokens.
fn parse_query_and_emit(index: usize, tokens: Vec<TokenWithSpan>) -> Result<(Box<Query>, Option<Emit>)> {
    let mut depth = 0i32;
    let mut emit_at = None;
    for (i, t) in tokens.iter().enumerate() {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(w) if depth == 0 && w.quote_style.is_none() && w.value.eq_ignore_ascii_case("EMIT") => {
                emit_at = Some(i);
                break;
            }
            _ => {}
        }
    }
    let (query_tokens, emit_tokens) = match emit_at {
        Some(i) => {
            let mut q = tokens;
            let e = q.split_off(i);
            (q, Some(e))
        }
        None => (tokens, None),
    };
    let mut p = StmtParser::new(index, super::rewrite::rewrite_query(query_tokens));
    if p.at_end() {
        return p.err("expected a query");
    }
    let query = {
        let r = p.parser.parse_query();
        p.wrap(r)
    }?;
    p.expect_end()?;
    let emit = match emit_tokens {
        None => None,
        Some(t) => Some(parse_emit(index, t)?),
    };
    Ok((query, emit))
}

fn parse_emit(index: usize, tokens: Vec<TokenWithSpan>) -> Result<Emit> {
    let mut p = StmtParser::new(index, tokens);
    p.expect_word("EMIT")?;
    let emit = if p.keyword(Keyword::ON) {
        if p.word("WINDOW") {
            p.expect_word("CLOSE")?;
            Emit::OnWindowClose
        } else if p.word("UPDATE") {
            Emit::OnUpdate
        } else {
            return p.err("expected WINDOW CLOSE or UPDATE after EMIT ON");
        }
    } else if p.word("EVERY") {
        let e = {
            let r = p.parser.parse_expr();
            p.wrap(r)
        }?;
        let ms = interval_literal_ms(&e).map_err(|m| EngineError::Sql { pos: p.here(), message: m })?;
        if ms <= 0 {
            return p.err("EMIT EVERY needs a positive interval");
        }
        Emit::Every(ms)
    } else {
        return p.err("expected ON WINDOW CLOSE, ON UPDATE or EVERY INTERVAL '...' after EMIT");
    };
    p.expect_end()?;
    Ok(emit)
}

fn parse_relation(
    p: &mut StmtParser<'_>,
    with_tokens: Option<Vec<TokenWithSpan>>,
    index: usize,
    is_source: bool,
) -> Result<RelationDef> {
    let kind = if is_source { "SOURCE" } else { "TABLE" };
    let name = p.ident(&format!("a {} name", kind.to_ascii_lowercase()))?;
    p.expect(Token::LParen)?;
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut watermark = None;
    let mut primary_key = Vec::new();
    loop {
        if p.word("WATERMARK") {
            let wpos = p.here();
            p.expect_word("FOR")?;
            let column = p.ident("the event-time column")?;
            p.expect_word("AS")?;
            let expr = {
                let r = p.parser.parse_expr();
                p.wrap(r)
            }?;
            if watermark.is_some() {
                return Err(EngineError::Sql { pos: wpos, message: "a source has at most one WATERMARK".into() });
            }
            watermark = Some(WatermarkDef { column, expr, pos: wpos });
        } else if p.keyword(Keyword::PRIMARY) {
            p.expect_word("KEY")?;
            p.expect(Token::LParen)?;
            loop {
                primary_key.push(p.ident("a column name")?);
                if !p.parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            p.expect(Token::RParen)?;
        } else {
            let cpos = p.here();
            let cname = p.ident("a column name or WATERMARK FOR")?;
            let sql_type = {
                let r = p.parser.parse_data_type();
                p.wrap(r)
            }?;
            let mut col =
                ColumnDef { name: cname, sql_type, not_null: false, primary_key: false, metadata_key: None, pos: cpos };
            loop {
                if p.keyword(Keyword::NOT) {
                    p.expect_word("NULL")?;
                    col.not_null = true;
                } else if p.keyword(Keyword::NULL) {
                } else if p.keyword(Keyword::PRIMARY) {
                    p.expect_word("KEY")?;
                    col.primary_key = true;
                    col.not_null = true;
                } else if p.word("METADATA") {
                    if p.keyword(Keyword::FROM) {
                        col.metadata_key = Some({
                            let r = p.parser.parse_literal_string();
                            p.wrap(r)
                        }?);
                    } else {
                        col.metadata_key = Some(col.name.clone());
                    }
                    if p.word("VIRTUAL") {}
                } else {
                    break;
                }
            }
            if columns.iter().any(|c| c.name == col.name) {
                return Err(EngineError::Sql {
                    pos: cpos,
                    message: format!("column '{}' is declared twice", col.name),
                });
            }
            columns.push(col);
        }
        if p.parser.consume_token(&Token::Comma) {
            continue;
        }
        p.expect(Token::RParen)?;
        break;
    }
    p.expect_end()?;
    for c in columns.iter().filter(|c| c.primary_key) {
        primary_key.push(c.name.clone());
    }
    let Some(with_tokens) = with_tokens else {
        return p.err(format!("a {kind} needs WITH (connector = '...', ...) at its end"));
    };
    let options = parse_options(index, with_tokens)?;
    Ok(RelationDef { name, columns, watermark, primary_key, options })
}

/// `WITH ( key = value [, ...] )`: keys are identifiers (dotted allowed) or quoted strings, values
/// string literals, numbers, booleans or identifiers.
pub fn parse_options(index: usize, tokens: Vec<TokenWithSpan>) -> Result<Options> {
    let mut p = StmtParser::new(index, tokens);
    p.expect_word("WITH")?;
    p.expect(Token::LParen)?;
    let mut out = Options::default();
    if p.parser.consume_token(&Token::RParen) {
        p.expect_end()?;
        return Ok(out);
    }
    loop {
        let kpos = p.here();
        let mut key = match p.parser.next_token().token {
            Token::Word(w) => w.value.to_ascii_lowercase(),
            Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s.to_ascii_lowercase(),
            other => {
                return Err(EngineError::Sql {
                    pos: kpos,
                    message: format!("expected an option name, found {}", describe(&other)),
                })
            }
        };
        while p.parser.consume_token(&Token::Period) {
            match p.parser.next_token().token {
                Token::Word(w) => {
                    key.push('.');
                    key.push_str(&w.value.to_ascii_lowercase());
                }
                other => {
                    return Err(EngineError::Sql {
                        pos: kpos,
                        message: format!("expected an option name part, found {}", describe(&other)),
                    })
                }
            }
        }
        p.expect(Token::Eq)?;
        let vpos = p.here();
        let value = match p.parser.next_token().token {
            Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s,
            Token::Number(n, _) => n,
            Token::Minus => match p.parser.next_token().token {
                Token::Number(n, _) => format!("-{n}"),
                other => {
                    return Err(EngineError::Sql {
                        pos: vpos,
                        message: format!("expected a number, found {}", describe(&other)),
                    })
                }
            },
            Token::Word(w) => w.value,
            other => {
                return Err(EngineError::Sql {
                    pos: vpos,
                    message: format!("expected a value for option '{key}', found {}", describe(&other)),
                })
            }
        };
        out.entries.push((key, value, kpos));
        if p.parser.consume_token(&Token::Comma) {
            continue;
        }
        p.expect(Token::RParen)?;
        break;
    }
    p.expect_end()?;
    Ok(out)
}

/// Milliseconds of an `INTERVAL 'n' UNIT` (or `INTERVAL 'n unit'`) literal. Months and years are not
/// fixed durations and are refused.
pub fn interval_literal_ms(e: &SqlExpr) -> std::result::Result<i64, String> {
    let SqlExpr::Interval(iv) = e else {
        return Err(format!("expected an INTERVAL literal, found {e}"));
    };
    let value = match iv.value.as_ref() {
        SqlExpr::Value(v) => match &v.value {
            datafusion_sql::sqlparser::ast::Value::SingleQuotedString(s) => s.clone(),
            datafusion_sql::sqlparser::ast::Value::Number(n, _) => n.clone(),
            other => return Err(format!("expected an interval value, found {other}")),
        },
        other => return Err(format!("expected an interval value, found {other}")),
    };
    let text = match &iv.leading_field {
        Some(f) => format!("{value} {f}"),
        None => value,
    };
    parse_duration_ms(&text)
}

/// Parses `'5 second'`, `'1.5 minutes'`, `'2 hours 30 minutes'`, `'10s'`, `'500ms'` into milliseconds.
pub fn parse_duration_ms(text: &str) -> std::result::Result<i64, String> {
    let s = text.trim().to_ascii_lowercase();
    if s.is_empty() {
        return Err("empty interval".into());
    }
    let mut total = 0f64;
    let mut rest = s.as_str();
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().map_err(|_| format!("bad interval '{text}'"))?;
        rest = rest[num_end..].trim_start();
        let unit_end = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = rest[unit_end..].trim_start();
        let per = match unit {
            "ms" | "millisecond" | "milliseconds" | "msec" => 1.0,
            "s" | "sec" | "secs" | "second" | "seconds" => 1000.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
            "h" | "hour" | "hours" => 3_600_000.0,
            "d" | "day" | "days" => 86_400_000.0,
            "" => return Err(format!("interval '{text}' needs a unit (SECOND, MINUTE, HOUR, DAY)")),
            "month" | "months" | "year" | "years" => {
                return Err(format!("interval '{text}': months and years have no fixed length; use days"))
            }
            other => return Err(format!("interval '{text}': unknown unit '{other}'")),
        };
        total += n * per;
    }
    Ok(total.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        let mut v = parse_pipeline(sql).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0).statement
    }

    fn err(sql: &str) -> String {
        parse_pipeline(sql).unwrap_err().to_string()
    }

    #[test]
    fn source_with_watermark_metadata_and_options() {
        let s = one(
            "CREATE SOURCE readings (\n  device_id VARCHAR NOT NULL,\n  ts TIMESTAMP(3) NOT NULL,\n  topic VARCHAR METADATA FROM 'topic',\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH (connector = 'mqtt', watermark.idle_timeout = '10s', qos = 1);",
        );
        let Statement::CreateSource(r) = s else { panic!() };
        assert_eq!(r.columns.len(), 3);
        assert!(r.columns[0].not_null);
        assert_eq!(r.columns[2].metadata_key.as_deref(), Some("topic"));
        assert_eq!(r.watermark.unwrap().column, "ts");
        assert_eq!(r.options.get("watermark.idle_timeout"), Some("10s"));
        assert_eq!(r.options.get("qos"), Some("1"));
    }

    #[test]
    fn sink_as_query_with_emit_and_options() {
        let s = one(
            "CREATE SINK s AS SELECT a FROM t GROUP BY a EMIT EVERY INTERVAL '10' SECOND WITH (connector = 'console')",
        );
        let Statement::CreateSink { input: SinkInput::Query { emit, .. }, options, .. } = s else { panic!() };
        assert_eq!(emit, Some(Emit::Every(10_000)));
        assert_eq!(options.get("connector"), Some("console"));
        let s = one("CREATE SINK s FROM v WITH (connector = 'console')");
        assert!(matches!(s, Statement::CreateSink { input: SinkInput::Relation(r), .. } if r == "v"));
    }

    #[test]
    fn errors_name_statement_line_and_column() {
        let e = err("CREATE SOURCE a (x INT) WITH (connector='file');\nCREATE SINK s AS SELECT a FROM t WHERE WITH (connector='console');");
        assert!(e.starts_with("statement 2 (line 2"), "{e}");
        let e = err("CREATE SOURCE a (x INT);");
        assert!(e.contains("needs WITH"), "{e}");
        let e = err("SELECT 1;");
        assert!(e.starts_with("statement 1 (line 1, column 1): expected CREATE or DROP"), "{e}");
        let e = err("CREATE SOURCE a (x INT, x INT) WITH (connector='file');");
        assert!(e.contains("declared twice"), "{e}");
        let e = err("CREATE SINK s AS SELECT 1 EMIT SOMETIMES WITH (connector='console');");
        assert!(e.contains("after EMIT"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5 second").unwrap(), 5000);
        assert_eq!(parse_duration_ms("1.5 MINUTE").unwrap(), 90_000);
        assert_eq!(parse_duration_ms("10s").unwrap(), 10_000);
        assert_eq!(parse_duration_ms("1 hour 30 minutes").unwrap(), 5_400_000);
        assert!(parse_duration_ms("1 month").is_err());
        assert!(parse_duration_ms("5").is_err());
    }
}
