//! Word count, the "hello world" of dataflow engines, twice: through the DataFrame API
//! and through SQL, checking that both give the same top 10.
//!
//! ```text
//! cargo run -p ember-cli --example word_count [-- FILE]
//! ```
//!
//! Without FILE it counts a short text it writes into a temporary directory.

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use ember_driver::functions::{count, lit, lower, regexp_replace, string_to_array};
use ember_driver::{DataFrame, Session, col};

const SAMPLE: &str = "\
It was the best of times, it was the worst of times,
it was the age of wisdom, it was the age of foolishness,
it was the epoch of belief, it was the epoch of incredulity,
it was the season of Light, it was the season of Darkness,
it was the spring of hope, it was the winter of despair,
we had everything before us, we had nothing before us,
we were all going direct to Heaven, we were all going direct the other way.
";

#[tokio::main]
async fn main() -> Result<()> {
    let (path, _tmp) = match std::env::args().nth(1) {
        Some(path) => (path, None),
        None => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("two-cities.txt");
            std::fs::write(&path, SAMPLE)?;
            (path.display().to_string(), Some(dir))
        }
    };
    let session = Session::builder().master("local[2]").build()?;

    // Text to rows: one row per line, in a single `line` column.
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let lines = StringArray::from(text.lines().collect::<Vec<_>>());
    let schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]));
    let lines =
        session.create_dataframe(vec![RecordBatch::try_new(schema, vec![Arc::new(lines)])?])?;

    // The DataFrame API: normalise, split, explode, group, count, sort.
    let words = lines
        .select(vec![
            string_to_array(
                regexp_replace(
                    lower(col("line")),
                    lit("[^a-z']+"),
                    lit(" "),
                    Some(lit("g")),
                ),
                lit(" "),
                lit(""),
            )
            .alias("word"),
        ])?
        .explode("word")?
        .filter(col("word").is_not_null())?;
    let by_api = words
        .group_by(vec![col("word")])
        .agg(vec![count(lit(1)).alias("n")])?
        .order_by(vec![
            col("n").sort(false, true),
            col("word").sort(true, true),
        ])?
        .limit(10)?;
    println!("DataFrame API:\n{}", by_api.show_string(10).await?);

    // The same through SQL over a temporary view.
    lines.create_or_replace_temp_view("lines")?;
    let by_sql = session
        .sql(
            "SELECT word, count(*) AS n
             FROM (SELECT unnest(string_to_array(
                       regexp_replace(lower(line), '[^a-z'']+', ' ', 'g'), ' ', '')) AS word
                   FROM lines)
             WHERE word IS NOT NULL
             GROUP BY word
             ORDER BY n DESC, word
             LIMIT 10",
        )
        .await?;
    println!("SQL:\n{}", by_sql.show_string(10).await?);

    let (api, sql) = (rows(&by_api).await?, rows(&by_sql).await?);
    ensure!(!api.is_empty(), "no words counted in {path}");
    ensure!(
        api == sql,
        "DataFrame API and SQL disagree:\n{api:?}\n{sql:?}"
    );
    println!(
        "both agree: the top word is {:?} ({} times)",
        api[0].0, api[0].1
    );
    Ok(())
}

/// The (word, count) rows of a result, in order.
async fn rows(df: &DataFrame) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for batch in df.collect().await? {
        let words = cast(batch.column(0), &DataType::Utf8)?;
        let counts = cast(batch.column(1), &DataType::Int64)?;
        let (words, counts) = (words.as_string::<i32>(), counts.as_primitive::<Int64Type>());
        for i in 0..batch.num_rows() {
            out.push((words.value(i).to_string(), counts.value(i)));
        }
    }
    Ok(out)
}
