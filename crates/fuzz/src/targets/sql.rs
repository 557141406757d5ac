//! `sql`: SQL text through a local session's SQL entry ([`Session::sql`]: parsing,
//! the expression-depth check, logical planning on a big-stack thread), then
//! physical planning. Nothing is executed.
//!
//! Queries (`SELECT`, `WITH`, `VALUES`, `EXPLAIN`, ...) go the whole way. Other
//! statements could act (`CREATE TABLE .. AS` runs a job, `COPY` and `CREATE
//! EXTERNAL TABLE` touch files, `SET` changes the session for later inputs), so they
//! are only parsed, on a thread with the planner's stack size.
//!
//! The dictionary nests deep (`(`, `NOT `, `CASE WHEN`, `-`, `+1` thousands of
//! times): ember refuses statements deeper than `ember.sql.max_expression_depth`,
//! and none may overflow a stack.

use ember_driver::Session;

use super::{KIB, Runner, Target, setup};
use crate::Result;
use crate::mutate::Dictionary;

pub fn target() -> Target {
    Target {
        name: "sql",
        max_len: 64 * KIB,
        dictionary: Dictionary {
            tokens: &[
                "(",
                ")",
                "+1",
                "*2",
                "-",
                "NOT ",
                "~",
                " AND ",
                " OR ",
                "||'x'",
                ",",
                "'",
                "\"",
                "[",
                "]",
                "::INT",
                " IS NULL",
                "CASE WHEN true THEN 1 ",
                "ELSE 2 END",
                " UNION ALL SELECT 1",
                " FROM t",
                " WHERE ",
                " GROUP BY 1",
                " ORDER BY 1",
                "(SELECT ",
                "SELECT ",
                "WITH x AS (SELECT 1) ",
                " JOIN t u ON true",
                "abs(",
                "coalesce(",
                "count(*)",
                " OVER (PARTITION BY a)",
                "ARRAY[",
                "{'a': 1}",
                "1e308",
                "-9223372036854775808",
                "NULL",
                "/*",
                "*/",
                "--",
                "\n",
                "$1",
                "named_struct('a', ",
                "interval '1 day'",
                "from_json(",
                "event_time(",
            ],
            wrappers: &[
                ("(", ")"),
                ("abs(", ")"),
                ("NOT (", ")"),
                ("-(", ")"),
                ("CASE WHEN true THEN ", " END"),
                ("(SELECT ", ")"),
                ("[", "]"),
                ("coalesce(", ", 1)"),
                ("1+", ""),
                ("NOT ", ""),
            ],
        },
        runner: || Ok(Box::new(Sql::new()?)),
        seeds,
    }
}

struct Sql {
    runtime: tokio::runtime::Runtime,
    session: Session,
}

impl Sql {
    fn new() -> Result<Sql> {
        let err = setup("a local session");
        // Like `ember sql`'s engine runtime: tasks evaluate expressions recursively.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_stack_size(16 << 20)
            .enable_all()
            .build()
            .map_err(|e| err(e.to_string()))?;
        let session = runtime.block_on(async {
            let session = Session::builder()
                .master("local[2]")
                .build()
                .map_err(|e| err(e.to_string()))?;
            session
                .sql("CREATE TABLE t AS VALUES (1, 'a', [1, 2]), (2, 'b', NULL)")
                .await
                .map_err(|e| err(e.to_string()))?;
            Ok::<_, crate::Error>(session)
        })?;
        Ok(Sql { runtime, session })
    }
}

/// Whether a statement is a query, by its first word: only queries are planned.
fn is_query(text: &str) -> bool {
    let first = text
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    matches!(
        first.as_str(),
        "SELECT" | "WITH" | "VALUES" | "EXPLAIN" | "SHOW" | "DESCRIBE" | "TABLE"
    )
}

impl Runner for Sql {
    fn run(&mut self, input: &[u8]) -> std::result::Result<String, String> {
        let text = String::from_utf8_lossy(input).into_owned();
        // `SELECT .. INTO` creates a table from the query's result: it would run it.
        if !is_query(&text) || text.to_ascii_uppercase().contains("INTO") {
            return parse_only(&self.runtime, &self.session, text);
        }
        let session = self.session.clone();
        self.runtime.block_on(async move {
            let df = session.sql(&text).await.map_err(|e| e.to_string())?;
            let plan = session
                .create_physical_plan(df.logical_plan())
                .await
                .map_err(|e| e.to_string())?;
            Ok(plan.name().to_string())
        })
    }
}

/// Parses a statement that is not a query, as the session does before planning it.
fn parse_only(
    runtime: &tokio::runtime::Runtime,
    session: &Session,
    text: String,
) -> std::result::Result<String, String> {
    runtime.block_on(async {
        session
            .parse(&text)
            .await
            .map(|s| {
                format!(
                    "parsed {}",
                    s.to_string().split(' ').next().unwrap_or_default()
                )
            })
            .map_err(|e| e.to_string())
    })
}

fn seeds() -> Result<Vec<Vec<u8>>> {
    let queries = [
        "SELECT 1",
        "SELECT column1 + 1, upper(column2) FROM t WHERE column1 > 0 ORDER BY 1",
        "SELECT column2, count(*), sum(column1) FROM t GROUP BY column2 HAVING count(*) > 0",
        "WITH x AS (SELECT column1 AS a FROM t) SELECT a, row_number() OVER (ORDER BY a) FROM x",
        "SELECT * FROM t JOIN t AS u ON t.column1 = u.column1 LIMIT 3",
        "SELECT CASE WHEN column1 > 1 THEN 'big' ELSE NULL END, column3[1] FROM t",
        "SELECT ((((1 + 2) * 3) - 4) / 5), NOT (true AND false), -(-(1))",
        "VALUES (1, 'x'), (2, 'y')",
        "EXPLAIN SELECT column1 FROM t WHERE column1 IN (SELECT 1)",
        "SELECT value FROM generate_series(1, 10) UNION ALL SELECT 2",
        "SELECT named_struct('a', 1, 'b', [1, 2]), interval '1 day', CAST('1' AS INT)",
        "CREATE EXTERNAL TABLE e (a INT) STORED AS CSV LOCATION '/nonexistent'",
        "SET datafusion.execution.batch_size = 1024",
        "INSERT INTO t VALUES (3, 'c', [3])",
    ];
    Ok(queries.iter().map(|q| q.as_bytes().to_vec()).collect())
}
