//! Parsing and planning SQL without risking the process's stack.
//!
//! DataFusion walks expressions recursively (naming them, simplifying them, planning
//! them), so a long chain such as `1+1+...+1` is as deep as it is long. On a runtime
//! thread's 2 MiB stack ten thousand terms overflow it, and a stack overflow aborts the
//! whole process: a driver would take every client's jobs down with one statement.
//! Two bounds make that impossible:
//!
//! - [`check_expression_depth`] refuses, with an error that says so, a statement whose
//!   expressions nest deeper than `ember.sql.max_expression_depth`; parentheses and
//!   subqueries are already bounded by the parser (`datafusion.sql_parser.recursion_limit`).
//! - [`on_planning_stack`] runs parsing, logical planning and physical planning on a
//!   thread whose stack is sized for the deepest expression that check lets through.

mod parse_budget;
pub(crate) mod scalar_subquery;

use std::future::Future;
use std::ops::ControlFlow;

use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::sql::parser::{CopyToSource, DFParserBuilder, Statement};
use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use ember_core::{EmberError, Result};

/// Stack of a planning thread. Only the pages a plan touches are ever mapped: the size
/// is an upper bound, not an allocation. Measured in a debug build, DataFusion uses
/// about 6 KiB per level of a chain of additions, so this holds the default depth
/// limit with a wide margin.
pub(crate) const PLANNING_STACK_BYTES: usize = 256 << 20;

/// Runs `work` (on the current tokio runtime's I/O and timers) on a fresh thread with
/// a [`PLANNING_STACK_BYTES`] stack, and returns its result.
pub(crate) async fn on_planning_stack<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ember-planner".into())
        .stack_size(PLANNING_STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(runtime.block_on(work));
        })
        .map_err(|e| EmberError::Internal(format!("cannot start a planning thread: {e}")))?;
    rx.await
        .map_err(|_| EmberError::Internal("planning a statement panicked".into()))?
}

/// Parses one statement as `SessionState::sql_to_statement` does, with the session's
/// dialect and recursion limit, within a [`parse_budget::ParseBudget`].
pub(crate) fn parse_statement(state: &SessionState, sql: &str) -> Result<Statement> {
    let options = &state.config().options().sql_parser;
    let name = options.dialect;
    let dialect = dialect_from_str(name)
        .ok_or_else(|| EmberError::Config(format!("unsupported SQL dialect: {name}")))?;
    let budget = parse_budget::ParseBudget::new(dialect, sql);
    let parsed = DFParserBuilder::new(sql)
        .with_dialect(&budget)
        .with_recursion_limit(options.recursion_limit.get())
        .build()
        .and_then(|mut p| p.parse_statements());
    let mut statements = match parsed {
        Ok(s) => s,
        Err(DataFusionError::SQL(..)) if budget.exhausted() => {
            return Err(EmberError::DataFusion(DataFusionError::Plan(format!(
                "the statement is too costly to parse: it made the parser try more than {} \
                 expressions for its {} bytes (nested NOT ( or CAST( around a syntax error \
                 make the parser backtrack); fix the syntax error or simplify the statement",
                budget.budget(),
                sql.len()
            ))));
        }
        Err(e) => return Err(e.into()),
    };
    if statements.len() > 1 {
        return Err(EmberError::NotSupported(
            "one SQL statement at a time: this text holds several".into(),
        ));
    }
    statements.pop_front().ok_or_else(|| {
        EmberError::DataFusion(DataFusionError::Plan("no SQL statement was given".into()))
    })
}

/// Refuses a statement whose expressions nest deeper than `max_depth`.
pub(crate) fn check_expression_depth(statement: &Statement, max_depth: usize) -> Result<()> {
    let mut depth = Depth {
        now: 0,
        max: max_depth,
    };
    let flow = match statement {
        Statement::Statement(s) => s.visit(&mut depth),
        Statement::Explain(explain) => {
            return check_expression_depth(&explain.statement, max_depth);
        }
        Statement::CopyTo(copy) => match &copy.source {
            CopyToSource::Query(query) => query.visit(&mut depth),
            CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        Statement::CreateExternalTable(_) | Statement::Reset(_) => ControlFlow::Continue(()),
    };
    match flow {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(EmberError::DataFusion(DataFusionError::Plan(format!(
            "the statement's expressions nest more than {max_depth} deep (a chain such as \
             1+1+...+1 nests one level per operator); raise ember.sql.max_expression_depth \
             or split the expression"
        )))),
    }
}

struct Depth {
    now: usize,
    max: usize,
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.now += 1;
        if self.now > self.max {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.now -= 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn parse(sql: &str) -> Statement {
        DFParser::parse_sql(sql).unwrap().pop_front().unwrap()
    }

    fn chain(terms: usize) -> String {
        format!("SELECT {}", vec!["1"; terms].join("+"))
    }

    #[test]
    fn a_long_chain_of_additions_is_refused_past_the_limit() {
        assert!(check_expression_depth(&parse(&chain(100)), 100).is_ok());
        let err = check_expression_depth(&parse(&chain(102)), 100).unwrap_err();
        assert!(
            err.to_string().contains("ember.sql.max_expression_depth"),
            "{err}"
        );
    }

    /// Found by the fuzzer (target sql): 26 nested `NOT (` around a syntax error
    /// parsed for minutes, the parser trying each `NOT` twice at every level.
    #[test]
    fn a_statement_that_makes_the_parser_backtrack_is_refused_at_once() {
        let state = datafusion::prelude::SessionContext::new().state();
        for sql in [
            format!("SELECT 1 WHERE {}1", "NOT (".repeat(40)),
            format!("SELECT {}1 +{}", "NOT (".repeat(40), ")".repeat(40)),
            format!("SELECT {}x AS", "CAST(".repeat(40)),
        ] {
            let started = std::time::Instant::now();
            let err = parse_statement(&state, &sql).unwrap_err().to_string();
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{sql}"
            );
            assert!(
                err.contains("too costly to parse") || err.contains("RecursionLimitExceeded"),
                "{sql}: {err}"
            );
        }
        // What the budget lets through: long statements that parse in one pass.
        let long = format!("SELECT {} AS x", vec!["NOT (a = 1)"; 1000].join(" AND "));
        parse_statement(&state, &long).unwrap();
        let nested = format!("SELECT {}1{}", "NOT (".repeat(20), ")".repeat(20));
        parse_statement(&state, &nested).unwrap();
    }

    #[test]
    fn depth_is_looked_for_inside_explain_copy_and_subqueries() {
        let deep = vec!["a"; 50].join(" OR ");
        for sql in [
            format!("EXPLAIN SELECT {deep} FROM t"),
            format!("COPY (SELECT {deep} FROM t) TO 'x.csv'"),
            format!("SELECT * FROM t WHERE x IN (SELECT y FROM u WHERE {deep})"),
        ] {
            assert!(check_expression_depth(&parse(&sql), 10).is_err(), "{sql}");
            assert!(check_expression_depth(&parse(&sql), 1000).is_ok(), "{sql}");
        }
    }
}
