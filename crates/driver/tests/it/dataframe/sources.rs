//! Where DataFrames come from: range, create_dataframe, table, sql.

use arrow::datatypes::DataType;
use ember_driver::Result;
use ember_driver::functions::{col, sum};

use super::{batch, error_of, ints, people, rows, session, sorted_rows, strs, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_yields_spark_ids_with_step() -> Result<()> {
    let s = session()?;
    let df = s.range(0, 10, 3)?;
    assert_eq!(df.columns(), vec!["id"]);
    assert_eq!(df.schema().field(0).data_type(), &DataType::Int64);
    assert_eq!(
        sorted_rows(&df.collect().await?)?,
        table(&[&["0"], &["3"], &["6"], &["9"]])
    );

    let down = s
        .range(10, 0, -4)?
        .order_by(vec![col("id").sort(false, false)])?;
    assert_eq!(
        rows(&down.collect().await?)?,
        table(&[&["10"], &["6"], &["2"]])
    );

    assert_eq!(s.range(5, 5, 1)?.count().await?, 0);
    assert!(error_of(s.range(0, 1, 0)).contains("step"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_spanning_many_batches_has_every_row() -> Result<()> {
    let s = session()?;
    let n: i64 = 200_000; // more than three 64k-row batches
    let df = s.range(0, n, 1)?;
    assert_eq!(df.count().await?, n as usize);
    let total = df
        .agg(vec![sum(col("id")).alias("total")])?
        .collect()
        .await?;
    assert_eq!(rows(&total)?, table(&[&[&(n * (n - 1) / 2).to_string()]]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_dataframe_holds_all_batches() -> Result<()> {
    let s = session()?;
    let df = s.create_dataframe(vec![
        batch(vec![("k", ints(&[1, 2])), ("v", strs(&["a", "b"]))])?,
        batch(vec![("k", ints(&[3])), ("v", strs(&["c"]))])?,
    ])?;
    assert_eq!(df.columns(), vec!["k", "v"]);
    assert_eq!(
        sorted_rows(&df.collect().await?)?,
        table(&[&["1", "a"], &["2", "b"], &["3", "c"]])
    );
    assert!(error_of(s.create_dataframe(vec![])).contains("at least one batch"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_view_is_visible_to_table_and_sql_and_can_be_replaced() -> Result<()> {
    let s = session()?;
    let df = people(&s)?;
    df.create_or_replace_temp_view("people")?;
    assert_eq!(s.table("people").await?.count().await?, 5);
    let eng = s.sql("SELECT name FROM people WHERE dept = 'eng'").await?;
    assert_eq!(
        sorted_rows(&eng.collect().await?)?,
        table(&[&["ann"], &["bob"]])
    );

    df.filter(col("salary").gt(ember_driver::lit(85)))?
        .create_or_replace_temp_view("people")?;
    assert_eq!(s.table("people").await?.count().await?, 2);
    assert!(s.table("nobody").await.is_err());
    Ok(())
}
