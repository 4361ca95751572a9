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
//! ```

use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

/// How deep an expression may nest before the parse gives up: sqlparser's default, which
/// DataFusion keeps too; past it the text goes on to DataFusion, which refuses it.
const RECURSION_LIMIT: usize = 50;

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
}

/// Checks that `sql` is one read-only statement, as far as sqlparser can tell.
pub fn check(sql: &str) -> Result<(), SqlCheckError> {
    let parsed = Parser::new(&GenericDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_statements());
    let Ok(statements) = parsed else {
        // DataFusion parses it again and says what is wrong.
        return Ok(());
    };
    match statements.as_slice() {
        [] => Err(SqlCheckError::Empty),
        [statement] => read_only(statement),
        several => Err(SqlCheckError::Several(several.len())),
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
    fn deep_nesting_is_let_through_to_datafusion_without_overflowing() {
        let sql = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(check(&sql), Ok(()));
    }
}
