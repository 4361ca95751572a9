//! The first half of the SQL API's statement check: the text is parsed as DataFusion parses it
//! (sqlparser, generic dialect) and refused unless it is one read-only statement: a query, an
//! `EXPLAIN` of one, `DESCRIBE` or a `SHOW`. The second half is the collector's check of the
//! logical plan DataFusion makes of it (`collector/src/sql`), which stays the authority: this
//! one answers earlier and with the statement's kind, and it is small enough to fuzz
//! (`sqlcheck/fuzz`) without DataFusion.
//!
//! Text that sqlparser cannot parse is let through: DataFusion's own parser knows a few
//! statements more (its `CREATE EXTERNAL TABLE`, `COPY … TO`) and gives the syntax error, and
//! the plan check refuses what they write.
//!
//! It also bounds how much a statement may ask of the planner, before anything is planned
//! ([`Complexity`]): the length of the text, its tokens, the nesting of its expressions, its
//! relations (tables, joins, set-operation terms, CTEs) and its nodes in all, as ClickHouse
//! bounds a query with `max_query_size`, `max_ast_depth` and `max_ast_elements`. sqlparser's
//! own recursion limit counts parentheses, calls and subqueries, not the left-deep chains that
//! `1+1+…+1`, `a AND b AND …` or `… UNION ALL …` parse into, and a planner walks those by
//! recursion and in time that grows faster than their length. [`complexity`] measures a
//! statement that DataFusion's own parser made, so that its statements are bounded too.
//!
//! ```
//! use wayfinder_sqlcheck::{SqlCheckError, check};
//!
//! assert!(check("SELECT count(*) FROM spans").is_ok());
//! assert!(check("EXPLAIN SELECT 1").is_ok());
//! assert_eq!(
//!     check("DROP TABLE spans").unwrap_err().to_string(),
//!     "only read-only statements are allowed, not DROP"
//! );
//! assert!(matches!(check("SELECT 1; SELECT 2"), Err(SqlCheckError::Several(2))));
//! let chain = format!("SELECT {}", vec!["1"; 1_000].join(" + "));
//! assert_eq!(
//!     check(&chain).unwrap_err().to_string(),
//!     "query too complex: its expressions nest deeper than 256 levels"
//! );
//! ```

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Query, SetExpr, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

/// How deep an expression may nest before the parse gives up: sqlparser's default, which
/// DataFusion keeps too; past it the text goes on to DataFusion, which refuses it.
const RECURSION_LIMIT: usize = 50;

/// How much one statement may ask of the planner. The figures are the defaults of
/// [`Complexity::LIMITS`]; each was chosen from how DataFusion plans the worst shape that
/// reaches it (`docs/operations.md`, Limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Complexity {
    /// Bytes of SQL text (ClickHouse's `max_query_size` is the same 256 KiB).
    pub max_bytes: usize,
    /// Tokens, blanks and comments not counted. A chain of operators is at most as deep as
    /// its tokens are many, so this also bounds what dropping a parsed tree may recurse.
    pub max_tokens: usize,
    /// Nesting of expressions, subqueries and table factors, left-deep operator chains
    /// included.
    pub max_depth: usize,
    /// Tables and derived tables, joins, table functions, set-operation terms and CTE bodies:
    /// DataFusion's join planning grows faster than the cube of their number.
    pub max_relations: usize,
    /// Expressions, queries and table factors in all.
    pub max_nodes: usize,
}

impl Complexity {
    /// The bounds the collector enforces.
    pub const LIMITS: Complexity = Complexity {
        max_bytes: 256 << 10,
        max_tokens: 20_000,
        max_depth: 256,
        max_relations: 100,
        max_nodes: 10_000,
    };
}

/// What bound a statement passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TooComplex {
    /// Its text is longer than this many bytes.
    Bytes(usize),
    /// It has more tokens than this.
    Tokens(usize),
    /// Its expressions nest deeper than this.
    Depth(usize),
    /// It has more relations than this.
    Relations(usize),
    /// It has more nodes than this.
    Nodes(usize),
}

impl std::fmt::Display for TooComplex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(n) => write!(f, "its text is longer than {n} bytes"),
            Self::Tokens(n) => write!(f, "it has more than {n} tokens"),
            Self::Depth(n) => write!(f, "its expressions nest deeper than {n} levels"),
            Self::Relations(n) => write!(
                f,
                "it has more than {n} tables, joins, set-operation terms and subqueries"
            ),
            Self::Nodes(n) => write!(f, "it has more than {n} expressions and relations"),
        }
    }
}

/// Why a statement is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SqlCheckError {
    /// Nothing but blanks and comments.
    #[error("the SQL holds no statement")]
    Empty,
    /// More than one statement.
    #[error("one statement at a time, not {0}")]
    Several(usize),
    /// A statement that writes or changes something (its first keywords).
    #[error("only read-only statements are allowed, not {0}")]
    NotReadOnly(String),
    /// A statement past one of the bounds of [`Complexity::LIMITS`].
    #[error("query too complex: {0}")]
    TooComplex(TooComplex),
}

/// Checks that `sql` is one read-only statement, as far as sqlparser can tell, within
/// [`Complexity::LIMITS`].
pub fn check(sql: &str) -> Result<(), SqlCheckError> {
    let limits = Complexity::LIMITS;
    if sql.len() > limits.max_bytes {
        return Err(SqlCheckError::TooComplex(TooComplex::Bytes(
            limits.max_bytes,
        )));
    }
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        // DataFusion tokenizes it again and says what is wrong.
        return Ok(());
    };
    let counted = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .count();
    if counted > limits.max_tokens {
        return Err(SqlCheckError::TooComplex(TooComplex::Tokens(
            limits.max_tokens,
        )));
    }
    let parsed = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens(tokens)
        .parse_statements();
    let Ok(statements) = parsed else {
        // DataFusion parses it again and says what is wrong.
        return Ok(());
    };
    match statements.as_slice() {
        [] => Err(SqlCheckError::Empty),
        [statement] => {
            read_only(statement)?;
            complexity(statement, &limits).map_err(SqlCheckError::TooComplex)
        }
        several => Err(SqlCheckError::Several(several.len())),
    }
}

/// Checks a parsed statement against `limits` (all but the text's): a walk that stops at the
/// first bound passed, so that it never recurses deeper than `max_depth` through
/// expressions, nor through a set-operation chain longer than `max_relations`.
pub fn complexity(statement: &Statement, limits: &Complexity) -> Result<(), TooComplex> {
    let mut measure = Measure {
        limits: *limits,
        depth: 0,
        relations: 0,
        nodes: 0,
    };
    match statement.visit(&mut measure) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(passed) => Err(passed),
    }
}

/// The walk of [`complexity`]: depth on the way down and up, counts on the way down.
struct Measure {
    limits: Complexity,
    depth: usize,
    relations: usize,
    nodes: usize,
}

impl Measure {
    fn enter(&mut self, relations: usize) -> ControlFlow<TooComplex> {
        self.depth += 1;
        self.nodes += 1;
        self.relations += relations;
        if self.depth > self.limits.max_depth {
            ControlFlow::Break(TooComplex::Depth(self.limits.max_depth))
        } else if self.relations > self.limits.max_relations {
            ControlFlow::Break(TooComplex::Relations(self.limits.max_relations))
        } else if self.nodes > self.limits.max_nodes {
            ControlFlow::Break(TooComplex::Nodes(self.limits.max_nodes))
        } else {
            ControlFlow::Continue(())
        }
    }

    fn leave(&mut self) -> ControlFlow<TooComplex> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

impl Visitor for Measure {
    type Break = TooComplex;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<TooComplex> {
        // The terms of its set operations, counted without recursion before the walk goes
        // down a left-deep chain of them (which has no hook of its own).
        let mut terms = 0usize;
        let mut pending = vec![query.body.as_ref()];
        while let Some(set) = pending.pop() {
            match set {
                SetExpr::SetOperation { left, right, .. } => {
                    pending.push(left);
                    pending.push(right);
                }
                _ => terms += 1,
            }
            if terms > self.limits.max_relations {
                break;
            }
        }
        self.enter(terms)
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<TooComplex> {
        self.leave()
    }

    fn pre_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<TooComplex> {
        self.enter(1)
    }

    fn post_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<TooComplex> {
        self.leave()
    }

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<TooComplex> {
        self.enter(0)
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<TooComplex> {
        self.leave()
    }
}

fn read_only(statement: &Statement) -> Result<(), SqlCheckError> {
    match statement {
        Statement::Query(query) => match query.body.as_ref() {
            SetExpr::Select(select) if select.into.is_some() => {
                Err(SqlCheckError::NotReadOnly("SELECT … INTO".to_owned()))
            }
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                Err(SqlCheckError::NotReadOnly(kind(statement)))
            }
            _ => Ok(()),
        },
        // `EXPLAIN ANALYZE` runs what it explains.
        Statement::Explain { statement, .. } => read_only(statement),
        Statement::ExplainTable { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. } => Ok(()),
        other => Err(SqlCheckError::NotReadOnly(kind(other))),
    }
}

/// A statement's kind for a message: its first keyword, two for `CREATE`, `ALTER` and `DROP`
/// kinds that have them (`CREATE TABLE`), never the whole text.
fn kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or_default().to_ascii_uppercase();
    match first.as_str() {
        "CREATE" | "ALTER" => match words.next() {
            Some(second) if second.chars().all(|c| c.is_ascii_alphabetic()) => {
                format!("{first} {}", second.to_ascii_uppercase())
            }
            _ => first,
        },
        _ => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_as_the_api_takes_them() {
        // Each row: the text, whether it passes (or the error), and why.
        let cases: [(&str, Result<(), SqlCheckError>, &str); 14] = [
            ("SELECT * FROM spans LIMIT 1", Ok(()), "a query"),
            ("WITH t AS (SELECT 1 AS x) SELECT x FROM t", Ok(()), "a CTE"),
            ("SELECT 1 UNION ALL SELECT 2", Ok(()), "a set operation"),
            ("EXPLAIN SELECT 1", Ok(()), "an explained query"),
            ("DESCRIBE spans", Ok(()), "a description"),
            ("SHOW TABLES", Ok(()), "a listing"),
            (
                "  -- only a comment\n",
                Err(SqlCheckError::Empty),
                "nothing",
            ),
            (
                "SELECT 1; SELECT 2",
                Err(SqlCheckError::Several(2)),
                "two statements",
            ),
            (
                "INSERT INTO spans VALUES (1)",
                Err(SqlCheckError::NotReadOnly("INSERT".into())),
                "a write",
            ),
            (
                "CREATE TABLE t AS SELECT 1",
                Err(SqlCheckError::NotReadOnly("CREATE TABLE".into())),
                "a table made",
            ),
            (
                "EXPLAIN ANALYZE DELETE FROM spans",
                Err(SqlCheckError::NotReadOnly("DELETE".into())),
                "EXPLAIN ANALYZE runs what it explains",
            ),
            (
                "SELECT * INTO copy FROM spans",
                Err(SqlCheckError::NotReadOnly("SELECT … INTO".into())),
                "a query that makes a table",
            ),
            (
                "SET datafusion.execution.batch_size = 1",
                Err(SqlCheckError::NotReadOnly("SET".into())),
                "a setting changed",
            ),
            (
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
                Ok(()),
                "DataFusion's own syntax: left to DataFusion and the plan check",
            ),
        ];
        for (sql, want, why) in cases {
            assert_eq!(check(sql), want, "{why}: {sql}");
        }
    }

    #[test]
    fn statements_past_a_bound_are_too_complex() {
        let chain = |term: &str, op: &str, n: usize| vec![term; n].join(op);
        let ctes = |n: usize| {
            let mut sql = String::from("WITH a0 AS (SELECT 1 AS x)");
            for i in 1..n {
                sql += &format!(", a{i} AS (SELECT x FROM a{})", i - 1);
            }
            sql + &format!(" SELECT x FROM a{}", n - 1)
        };
        let joins = |n: usize| {
            let mut sql = String::from("SELECT 1 FROM spans t0");
            for i in 1..n {
                sql += &format!(" JOIN spans t{i} ON t{i}.trace_id = t0.trace_id");
            }
            sql
        };
        let list = |n: usize| {
            let ids: Vec<String> = (0..n).map(|i| format!("'{i:032x}'")).collect();
            format!("SELECT 1 FROM spans WHERE trace_id IN ({})", ids.join(","))
        };
        let case = |n: usize| {
            let arms: Vec<String> = (0..n).map(|i| format!("WHEN x = {i} THEN {i}")).collect();
            format!("SELECT CASE {} END FROM t", arms.join(" "))
        };
        let limits = Complexity::LIMITS;
        // Each row: the SQL, the bound it passes (or none), and why.
        let cases: Vec<(String, Option<TooComplex>, &str)> = vec![
            (
                format!("SELECT {}", chain("1", "+", 2_000)),
                Some(TooComplex::Depth(limits.max_depth)),
                "a left-deep sum (the review's stack overflow)",
            ),
            (
                format!("SELECT {}", chain("'a'", "||", 2_000)),
                Some(TooComplex::Depth(limits.max_depth)),
                "a left-deep concatenation",
            ),
            (
                format!("SELECT 1 WHERE {}", chain("1 = 1", " AND ", 2_000)),
                Some(TooComplex::Depth(limits.max_depth)),
                "a chain of AND, as a Jaeger search with many tags made",
            ),
            (
                format!("SELECT 1 WHERE {}", chain("1 = 1", " OR ", 2_000)),
                Some(TooComplex::Depth(limits.max_depth)),
                "a chain of OR",
            ),
            (
                chain("SELECT 1", " UNION ALL ", 5_000),
                Some(TooComplex::Relations(limits.max_relations)),
                "a long set operation, counted before the walk descends it",
            ),
            (
                ctes(2_000),
                Some(TooComplex::Relations(limits.max_relations)),
                "a chain of CTEs, each reading the one before",
            ),
            (
                joins(200),
                Some(TooComplex::Relations(limits.max_relations)),
                "joins, whose planning time grows faster than their cube",
            ),
            (
                format!("SELECT '{}'", "x".repeat(300 << 10)),
                Some(TooComplex::Bytes(limits.max_bytes)),
                "a text longer than ClickHouse's max_query_size",
            ),
            (
                format!("SELECT 1 WHERE x IN ({})", chain("7", ",", 12_000)),
                Some(TooComplex::Tokens(limits.max_tokens)),
                "more tokens than a tree may be deep",
            ),
            (
                case(3_000),
                Some(TooComplex::Nodes(limits.max_nodes)),
                "a flat expression with more nodes than the bound",
            ),
            (
                format!("SELECT {}", chain("1", "+", 250)),
                None,
                "a chain just under the depth bound",
            ),
            (
                list(5_000),
                None,
                "five thousand trace ids: a long IN list is flat",
            ),
            (joins(20), None, "twenty joins"),
            (
                chain("SELECT 1", " UNION ALL ", 50),
                None,
                "fifty set-operation terms",
            ),
        ];
        for (sql, want, why) in cases {
            let got = match check(&sql) {
                Ok(()) => None,
                Err(SqlCheckError::TooComplex(passed)) => Some(passed),
                Err(other) => panic!("{why}: {other}"),
            };
            assert_eq!(got, want, "{why}");
        }
    }

    #[test]
    fn deep_nesting_is_let_through_to_datafusion_without_overflowing() {
        let sql = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
        assert_eq!(check(&sql), Ok(()));
    }
}
