//! Token-level rewrites that bring the dialect's spellings to what sqlparser parses, before a query
//! is parsed. Each keeps the positions of the tokens it leaves, so errors still point into the file.
//!
//! - Flink's `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), ...))` becomes `TUMBLE(t, DESCRIPTOR(ts), ...)`.
//! - `JOIN t FOR SYSTEM_TIME AS OF r.ts` loses its `FOR SYSTEM_TIME AS OF r.ts`: a reference TABLE
//!   is always joined as a lookup, against its current contents.
//! - `ASOF JOIN q ON ...` gets sqlparser's mandatory `MATCH_CONDITION (TRUE)`; the planner reads the
//!   whole condition from `ON`.
//! - `MATCH_RECOGNIZE (... WITHIN INTERVAL '5' MINUTE [EMIT TIMEOUTS] ...)` moves the bound into two
//!   synthetic `DEFINE` entries ([`WITHIN_SYMBOL`], [`TIMEOUTS_SYMBOL`]) that the pattern planner takes out.
//!
//! These rewrites never change what a query means; they only respell it.

use datafusion_sql::sqlparser::tokenizer::{Token, TokenWithSpan};

/// Synthetic DEFINE entry carrying a `WITHIN` bound.
pub const WITHIN_SYMBOL: &str = "__eddy_within";
/// Synthetic DEFINE entry saying `EMIT TIMEOUTS`.
pub const TIMEOUTS_SYMBOL: &str = "__eddy_emit_timeouts";

fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

fn is_word(t: &Token, w: &str) -> bool {
    matches!(t, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w))
}

fn next_sig(tokens: &[TokenWithSpan], from: usize) -> Option<usize> {
    (from..tokens.len()).find(|&j| !is_trivia(&tokens[j].token))
}

/// Index of the `)` closing the `(` at `open`.
fn closing_paren(tokens: &[TokenWithSpan], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (j, t) in tokens.iter().enumerate().skip(open) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

/// All rewrites, in order.
pub fn rewrite_query(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let tokens = rewrite_flink_tvf(tokens);
    let tokens = drop_system_time(tokens);
    let tokens = asof_match_condition(tokens);
    match_within(tokens)
}

fn keep(tokens: Vec<TokenWithSpan>, drop: Vec<bool>) -> Vec<TokenWithSpan> {
    tokens.into_iter().zip(drop).filter(|(_, d)| !d).map(|(t, _)| t).collect()
}

fn rewrite_flink_tvf(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut drop = vec![false; tokens.len()];
    for i in 0..tokens.len() {
        if !is_word(&tokens[i].token, "TABLE") {
            continue;
        }
        let open = next_sig(&tokens, i + 1).filter(|&o| tokens[o].token == Token::LParen);
        let func = open.and_then(|o| next_sig(&tokens, o + 1));
        let is_tvf =
            func.is_some_and(|f| ["TUMBLE", "HOP", "SESSION", "CUMULATE"].iter().any(|w| is_word(&tokens[f].token, w)));
        let (true, Some(open), Some(func)) = (is_tvf, open, func) else { continue };
        let Some(close) = closing_paren(&tokens, open) else { continue };
        drop[i] = true;
        drop[open] = true;
        drop[close] = true;
        // `TABLE` right inside the function's parentheses.
        if let Some(inner) = next_sig(&tokens, func + 1).and_then(|p| next_sig(&tokens, p + 1)) {
            if is_word(&tokens[inner].token, "TABLE") {
                drop[inner] = true;
            }
        }
    }
    keep(tokens, drop)
}

/// `FOR SYSTEM_TIME AS OF <column or call>` goes.
fn drop_system_time(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut drop = vec![false; tokens.len()];
    let mut i = 0;
    while i < tokens.len() {
        let mut at = Some(i);
        let mut words = Vec::new();
        for w in ["FOR", "SYSTEM_TIME", "AS", "OF"] {
            at = at.filter(|&j| is_word(&tokens[j].token, w));
            if let Some(j) = at {
                words.push(j);
                at = next_sig(&tokens, j + 1);
            }
        }
        let (4, Some(mut j)) = (words.len(), at) else {
            i += 1;
            continue;
        };
        // The time expression: a (qualified) name, maybe called: `r.ts`, `PROCTIME()`.
        let mut end = None;
        while matches!(tokens[j].token, Token::Word(_)) {
            end = Some(j);
            match next_sig(&tokens, j + 1) {
                Some(p) if tokens[p].token == Token::Period => match next_sig(&tokens, p + 1) {
                    Some(n) => j = n,
                    None => break,
                },
                Some(p) if tokens[p].token == Token::LParen => {
                    end = closing_paren(&tokens, p);
                    break;
                }
                _ => break,
            }
        }
        let Some(end) = end else {
            i += 1;
            continue;
        };
        for d in drop.iter_mut().take(end + 1).skip(words[0]) {
            *d = true;
        }
        i = end + 1;
    }
    keep(tokens, drop)
}

fn word(w: &str) -> Token {
    Token::make_word(w, None)
}

/// `ASOF JOIN q [AS a] ON ...` gets `MATCH_CONDITION (TRUE)` before its `ON`.
fn asof_match_condition(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut inserts = Vec::new();
    for i in 0..tokens.len() {
        if !is_word(&tokens[i].token, "ASOF")
            || !next_sig(&tokens, i + 1).is_some_and(|j| is_word(&tokens[j].token, "JOIN"))
        {
            continue;
        }
        let mut depth = 0i32;
        for (j, tok) in tokens.iter().enumerate().skip(i + 1) {
            match &tok.token {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth < 0 {
                        break;
                    }
                }
                t if depth == 0 && is_word(t, "MATCH_CONDITION") => break,
                t if depth == 0 && is_word(t, "ON") => {
                    inserts.push(j);
                    break;
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::with_capacity(tokens.len() + inserts.len() * 5);
    for (j, t) in tokens.into_iter().enumerate() {
        if inserts.contains(&j) {
            let span = t.span;
            for tok in [
                word("MATCH_CONDITION"),
                Token::LParen,
                word("TRUE"),
                Token::RParen,
                Token::Whitespace(datafusion_sql::sqlparser::tokenizer::Whitespace::Space),
            ] {
                out.push(TokenWithSpan::new(tok, span));
            }
        }
        out.push(t);
    }
    out
}

/// `WITHIN <interval> [EMIT TIMEOUTS]` inside `MATCH_RECOGNIZE (...)` becomes DEFINE entries.
fn match_within(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut i = 0;
    while i < tokens.len() {
        if !is_word(&tokens[i].token, "MATCH_RECOGNIZE") {
            i += 1;
            continue;
        }
        let Some(open) = next_sig(&tokens, i + 1).filter(|&o| tokens[o].token == Token::LParen) else {
            i += 1;
            continue;
        };
        let Some(close) = closing_paren(&tokens, open) else { break };
        let mut depth = 0i32;
        let mut within = None;
        for (j, t) in tokens.iter().enumerate().take(close).skip(open + 1) {
            match &t.token {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                t if depth == 0 && is_word(t, "WITHIN") => {
                    within = Some(j);
                    break;
                }
                _ => {}
            }
        }
        let Some(w) = within else {
            i = close + 1;
            continue;
        };
        // The interval runs to DEFINE / EMIT / the closing parenthesis.
        let mut depth = 0i32;
        let mut end = close;
        for (j, t) in tokens.iter().enumerate().take(close).skip(w + 1) {
            match &t.token {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                t if depth == 0 && (is_word(t, "DEFINE") || is_word(t, "EMIT")) => {
                    end = j;
                    break;
                }
                _ => {}
            }
        }
        let interval: Vec<TokenWithSpan> = tokens[w + 1..end].to_vec();
        let mut removed_to = end;
        let mut timeouts = false;
        if is_word(&tokens[end].token, "EMIT") {
            if let Some(t) = next_sig(&tokens, end + 1).filter(|&t| is_word(&tokens[t].token, "TIMEOUTS")) {
                timeouts = true;
                removed_to = t + 1;
            }
        }
        let span = tokens[w].span;
        let mut insert = vec![Token::Comma, word(WITHIN_SYMBOL), word("AS")];
        let mut inserted: Vec<TokenWithSpan> = insert.drain(..).map(|t| TokenWithSpan::new(t, span)).collect();
        inserted
            .push(TokenWithSpan::new(Token::Whitespace(datafusion_sql::sqlparser::tokenizer::Whitespace::Space), span));
        inserted.extend(interval);
        if timeouts {
            for t in [Token::Comma, word(TIMEOUTS_SYMBOL), word("AS"), word("TRUE")] {
                inserted.push(TokenWithSpan::new(t, span));
            }
        }
        // Put the entries before the closing parenthesis, then cut WITHIN ... out.
        tokens.splice(close..close, inserted);
        tokens.drain(w..removed_to);
        i += 1;
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_sql::sqlparser::tokenizer::Tokenizer;

    fn rewrite(sql: &str) -> String {
        let tokens = Tokenizer::new(super::super::ddl::dialect(), sql).tokenize_with_location().unwrap();
        let words: Vec<String> =
            rewrite_query(tokens).into_iter().filter(|t| !is_trivia(&t.token)).map(|t| t.token.to_string()).collect();
        words.join(" ")
    }

    #[test]
    fn respells_lookup_asof_and_within() {
        assert_eq!(
            rewrite("SELECT * FROM r JOIN d FOR SYSTEM_TIME AS OF r.ts AS x ON r.k = x.k"),
            "SELECT * FROM r JOIN d AS x ON r . k = x . k"
        );
        assert_eq!(
            rewrite("SELECT * FROM t ASOF JOIN (SELECT * FROM q) AS q ON t.s = q.s AND t.ts >= q.ts"),
            "SELECT * FROM t ASOF JOIN ( SELECT * FROM q ) AS q MATCH_CONDITION ( TRUE ) ON t . s = q . s AND t . ts >= q . ts"
        );
        assert_eq!(
            rewrite("SELECT * FROM r MATCH_RECOGNIZE (PATTERN (A B) WITHIN INTERVAL '5' MINUTE EMIT TIMEOUTS DEFINE A AS x > 1) AS m"),
            "SELECT * FROM r MATCH_RECOGNIZE ( PATTERN ( A B ) DEFINE A AS x > 1 , __eddy_within AS INTERVAL '5' MINUTE , __eddy_emit_timeouts AS TRUE ) AS m"
        );
    }
}
