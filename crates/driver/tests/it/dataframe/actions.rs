//! Actions: count, first, show, explain.

use ember_driver::functions::{col, lit};
use ember_driver::{ExplainMode, Result};

use super::{people, rows, session, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_counts_rows_after_transformations() -> Result<()> {
    let s = session()?;
    let df = people(&s)?;
    assert_eq!(df.count().await?, 5);
    assert_eq!(df.filter(col("dept").eq(lit("ops")))?.count().await?, 2);
    assert_eq!(df.filter(col("id").gt(lit(99)))?.count().await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_returns_one_row_or_none() -> Result<()> {
    let s = session()?;
    let df = people(&s)?.order_by(vec![col("salary").sort(false, false)])?;
    let first = df.first().await?.map(|b| rows(&[b])).transpose()?;
    assert_eq!(first, Some(table(&[&["1", "ann", "eng", "100"]])));
    let none = df.filter(col("id").gt(lit(99)))?.first().await?;
    assert!(none.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_string_draws_a_bordered_table_of_the_first_rows() -> Result<()> {
    let s = session()?;
    let df = people(&s)?
        .select(vec![col("id"), col("name")])?
        .order_by(vec![col("id").sort(true, false)])?;
    let shown = df.show_string(2).await?;
    let expected = "\
+----+------+
| id | name |
+----+------+
| 1  | ann  |
| 2  | bob  |
+----+------+
only showing top 2 rows";
    assert_eq!(shown, expected);
    let all = df.show_string(10).await?;
    assert!(all.contains("| 5  | eve  |"), "{all}");
    assert!(!all.contains("only showing"), "{all}");
    df.show(1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_has_logical_physical_and_stage_sections() -> Result<()> {
    let s = session()?;
    let df = people(&s)?
        .filter(col("salary").gt(lit(75)))?
        .group_by(vec![col("dept")])
        .count()?;
    let text = df.explain(ExplainMode::Simple).await?;
    let logical = text.find("== Logical Plan ==");
    let physical = text.find("== Physical Plan ==");
    let stages = text.find("== Stage DAG ==");
    assert!(
        logical < physical && physical < stages && logical.is_some(),
        "sections missing or out of order:\n{text}"
    );
    assert!(text.contains("Aggregate"), "{text}");
    assert!(!text.contains("== Parsed Logical Plan =="), "{text}");

    let extended = df.explain(ExplainMode::Extended).await?;
    assert!(
        extended.starts_with("== Parsed Logical Plan =="),
        "{extended}"
    );
    assert!(extended.contains("== Stage DAG =="), "{extended}");
    df.print_explain(ExplainMode::Simple).await?;
    Ok(())
}
