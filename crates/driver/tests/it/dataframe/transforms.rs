//! Transformations: each test builds a frame and checks the rows it produces.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, ListBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use ember_driver::Result;
use ember_driver::functions::{ExprFunctionExt, col, count, lit, row_number, sum};

use super::{batch, error_of, ints, people, rows, session, sorted_rows, strs, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_projects_columns_and_expressions() -> Result<()> {
    let s = session()?;
    let df = people(&s)?.select(vec![col("name"), (col("salary") * lit(2)).alias("double")])?;
    assert_eq!(df.columns(), vec!["name", "double"]);
    assert_eq!(
        sorted_rows(&df.collect().await?)?,
        table(&[
            &["ann", "200"],
            &["bob", "160"],
            &["cid", "140"],
            &["dan", "180"],
            &["eve", "120"]
        ])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_expr_parses_sql_expressions() -> Result<()> {
    let s = session()?;
    let df = people(&s)?.select_expr(&["id", "salary + 1 AS raised", "upper(name) AS shout"])?;
    assert_eq!(df.columns(), vec!["id", "raised", "shout"]);
    let first = df.order_by(vec![col("id").sort(true, false)])?.limit(2)?;
    assert_eq!(
        rows(&first.collect().await?)?,
        table(&[&["1", "101", "ANN"], &["2", "81", "BOB"]])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_columns_are_errors_naming_the_column() -> Result<()> {
    let s = session()?;
    let df = people(&s)?;
    assert!(error_of(df.select_expr(&["nope + 1"])).contains("nope"));
    assert!(error_of(df.filter(col("missing_col").gt(lit(1)))).contains("missing_col"));
    assert!(error_of(df.select(vec![col("ghost")])).contains("ghost"));
    assert!(error_of(df.filter_expr("phantom = 1")).contains("phantom"));
    assert!(error_of(df.drop_duplicates(Some(&["absent"]))).contains("absent"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_where_and_filter_expr_agree() -> Result<()> {
    let s = session()?;
    let df = people(&s)?;
    let expected = table(&[&["1", "ann", "eng", "100"], &["4", "dan", "ops", "90"]]);
    let a = df.filter(col("salary").gt_eq(lit(90)))?;
    let b = df.where_(col("salary").gt_eq(lit(90)))?;
    let c = df.filter_expr("salary >= 90")?;
    for f in [a, b, c] {
        assert_eq!(sorted_rows(&f.collect().await?)?, expected);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_column_adds_or_replaces() -> Result<()> {
    let s = session()?;
    let df = people(&s)?
        .with_column("salary", col("salary") + lit(1))?
        .with_column("senior", col("salary").gt(lit(85)))?;
    assert_eq!(df.columns(), vec!["id", "name", "dept", "salary", "senior"]);
    let top = df
        .filter(col("id").lt_eq(lit(2)))?
        .select(vec![col("salary"), col("senior")])?;
    assert_eq!(
        sorted_rows(&top.collect().await?)?,
        table(&[&["101", "true"], &["81", "false"]])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_column_renamed_and_drop_change_the_columns() -> Result<()> {
    let s = session()?;
    let df = people(&s)?
        .with_column_renamed("name", "person")?
        .drop(&["dept", "no_such"])?;
    assert_eq!(df.columns(), vec!["id", "person", "salary"]);
    let ann = df.filter(col("person").eq(lit("ann")))?;
    assert_eq!(rows(&ann.collect().await?)?, table(&[&["1", "ann", "100"]]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_by_and_limit_return_the_top_rows_in_order() -> Result<()> {
    let s = session()?;
    let df = people(&s)?
        .order_by(vec![
            col("dept").sort(true, false),
            col("salary").sort(false, false),
        ])?
        .select(vec![col("name")])?;
    let all: Vec<String> = rows(&df.collect().await?)?.into_iter().flatten().collect();
    assert_eq!(all, vec!["ann", "bob", "eve", "dan", "cid"]);
    let top2 = df.limit(2)?;
    assert_eq!(rows(&top2.collect().await?)?, table(&[&["ann"], &["bob"]]));
    assert_eq!(people(&s)?.limit(3)?.count().await?, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_by_aggregates_per_group() -> Result<()> {
    let s = session()?;
    let df = people(&s)?;
    let agg = df.group_by(vec![col("dept")]).agg(vec![
        sum(col("salary")).alias("total"),
        count(col("id")).alias("n"),
    ])?;
    assert_eq!(agg.columns(), vec!["dept", "total", "n"]);
    assert_eq!(
        sorted_rows(&agg.collect().await?)?,
        table(&[
            &["eng", "180", "2"],
            &["hr", "60", "1"],
            &["ops", "160", "2"]
        ])
    );
    let counts = df.group_by(vec![col("dept")]).count()?;
    assert_eq!(counts.columns(), vec!["dept", "count"]);
    assert_eq!(
        sorted_rows(&counts.collect().await?)?,
        table(&[&["eng", "2"], &["hr", "1"], &["ops", "2"]])
    );
    let maxes = df.group_by(vec![col("dept")]).max(&["salary"])?;
    assert_eq!(maxes.columns(), vec!["dept", "max(salary)"]);
    assert_eq!(
        sorted_rows(&maxes.collect().await?)?,
        table(&[&["eng", "100"], &["hr", "60"], &["ops", "90"]])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_removes_duplicate_rows() -> Result<()> {
    let s = session()?;
    let df = s.create_dataframe(vec![batch(vec![
        ("k", ints(&[1, 1, 2, 1])),
        ("v", strs(&["x", "x", "y", "z"])),
    ])?])?;
    assert_eq!(
        sorted_rows(&df.distinct()?.collect().await?)?,
        table(&[&["1", "x"], &["1", "z"], &["2", "y"]])
    );
    assert_eq!(df.drop_duplicates(None)?.count().await?, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_duplicates_subset_keeps_first_whole_row_per_key() -> Result<()> {
    let s = session()?;
    let df = s.create_dataframe(vec![batch(vec![
        ("k", ints(&[1, 1, 2, 1])),
        ("v", strs(&["first", "second", "only", "third"])),
        ("n", ints(&[10, 20, 30, 40])),
    ])?])?;
    let dedup = df.drop_duplicates(Some(&["k"]))?;
    assert_eq!(dedup.columns(), vec!["k", "v", "n"]);
    assert_eq!(
        sorted_rows(&dedup.collect().await?)?,
        table(&[&["1", "first", "10"], &["2", "only", "30"]])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn union_is_by_position_and_union_by_name_by_name() -> Result<()> {
    let s = session()?;
    let a = s.create_dataframe(vec![batch(vec![
        ("id", ints(&[1, 2])),
        ("name", strs(&["x", "y"])),
    ])?])?;
    let c = s.create_dataframe(vec![batch(vec![
        ("id", ints(&[2, 3])),
        ("label", strs(&["y", "z"])),
    ])?])?;
    let by_position = a.union(&c)?;
    assert_eq!(by_position.columns(), vec!["id", "name"]);
    assert_eq!(
        sorted_rows(&by_position.collect().await?)?,
        table(&[&["1", "x"], &["2", "y"], &["2", "y"], &["3", "z"]])
    );

    // Same columns in the other order: matched by name, duplicates kept.
    let b = s.create_dataframe(vec![batch(vec![
        ("name", strs(&["y", "z"])),
        ("id", ints(&[2, 3])),
    ])?])?;
    let by_name = a.union_by_name(&b)?.select(vec![col("id"), col("name")])?;
    assert_eq!(
        sorted_rows(&by_name.collect().await?)?,
        table(&[&["1", "x"], &["2", "y"], &["2", "y"], &["3", "z"]])
    );

    // A column only one side has is null for the other side's rows.
    let d = s.create_dataframe(vec![batch(vec![("id", ints(&[9]))])?])?;
    let padded = a.union_by_name(&d)?.select(vec![col("id"), col("name")])?;
    assert_eq!(
        sorted_rows(&padded.collect().await?)?,
        table(&[&["1", "x"], &["2", "y"], &["9", "null"]])
    );
    Ok(())
}

fn tagged() -> Result<RecordBatch> {
    let mut tags = ListBuilder::new(StringBuilder::new());
    tags.append_value([Some("a"), Some("b")]);
    tags.append_null();
    tags.append_value(Vec::<Option<&str>>::new());
    tags.append_value([Some("c")]);
    let tags: ArrayRef = Arc::new(tags.finish());
    batch(vec![("id", ints(&[1, 2, 3, 4])), ("tags", tags)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explode_gives_one_row_per_element_and_drops_null_and_empty_lists() -> Result<()> {
    let s = session()?;
    let exploded = s.create_dataframe(vec![tagged()?])?.explode("tags")?;
    assert_eq!(exploded.columns(), vec!["id", "tags"]);
    assert_eq!(exploded.schema().field(1).data_type(), &DataType::Utf8);
    assert_eq!(
        sorted_rows(&exploded.collect().await?)?,
        table(&[&["1", "a"], &["1", "b"], &["4", "c"]])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_row_number_ranks_within_partition() -> Result<()> {
    let s = session()?;
    let rank = row_number()
        .partition_by(vec![col("dept")])
        .order_by(vec![col("salary").sort(false, false)])
        .build()?
        .alias("rank");
    let df = people(&s)?.select(vec![col("name"), col("dept"), rank])?;
    assert_eq!(
        sorted_rows(&df.collect().await?)?,
        table(&[
            &["ann", "eng", "1"],
            &["bob", "eng", "2"],
            &["cid", "ops", "2"],
            &["dan", "ops", "1"],
            &["eve", "hr", "1"],
        ])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartition_and_coalesce_keep_every_row() -> Result<()> {
    let s = session()?;
    let df = s.range(0, 1000, 1)?;
    let expected = sorted_rows(&df.collect().await?)?;
    let hashed = df.repartition(4, vec![col("id")])?;
    assert_eq!(sorted_rows(&hashed.collect().await?)?, expected);
    let round_robin = df.repartition(3, vec![])?;
    assert_eq!(round_robin.count().await?, 1000);
    let one = hashed.coalesce(1)?;
    assert_eq!(sorted_rows(&one.collect().await?)?, expected);
    assert!(error_of(df.repartition(0, vec![])).contains("at least one partition"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_frame_is_computed_once_and_then_read() -> Result<()> {
    let s = session()?;
    let df = s
        .range(0, 100, 1)?
        .filter((col("id") % lit(7)).eq(lit(0)))?;
    let cached = df.cache()?;
    let dag = s.explain_stages(cached.logical_plan()).await?;
    assert!(dag.contains("cache(") && dag.contains("0 of"), "{dag}");
    assert_eq!(
        sorted_rows(&cached.collect().await?)?,
        sorted_rows(&df.collect().await?)?
    );
    // The kept partitions are read: the cache stage does not run again.
    let dag = s.explain_stages(cached.logical_plan()).await?;
    assert!(dag.contains("cached: read, not run"), "{dag}");
    assert_eq!(cached.count().await?, 15);
    let storage = s.storage();
    assert_eq!(storage.len(), 1, "{storage:?}");
    assert_eq!(storage[0].rows, 15);
    assert_eq!(storage[0].cached_partitions, storage[0].partitions);
    // Frames built on it read it too; filters stay above it.
    let evens = cached.filter((col("id") % lit(2)).eq(lit(0)))?;
    assert_eq!(evens.count().await?, 8);
    let plain = cached.unpersist()?;
    assert!(s.storage().is_empty());
    assert_eq!(plain.count().await?, 15);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_batches_applies_the_registered_function() -> Result<()> {
    let s = session()?;
    let out = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("doubled", DataType::Int64, false),
    ]));
    let schema = out.clone();
    s.register_batch_fn("double", out, move |b: RecordBatch| {
        let ids = b.column(0).clone();
        let doubled = arrow::compute::kernels::numeric::mul(&ids, &Int64Array::new_scalar(2))?;
        Ok(RecordBatch::try_new(schema.clone(), vec![ids, doubled])?)
    });
    let df = s.range(0, 5, 1)?.map_batches("double")?;
    assert_eq!(df.columns(), vec!["id", "doubled"]);
    assert_eq!(
        sorted_rows(&df.collect().await?)?,
        table(&[
            &["0", "0"],
            &["1", "2"],
            &["2", "4"],
            &["3", "6"],
            &["4", "8"]
        ])
    );
    assert!(error_of(s.range(0, 1, 1)?.map_batches("triple")).contains("'triple'"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_table_keeps_a_table_and_uncache_table_forgets_it() -> Result<()> {
    let s = session()?;
    s.sql("CREATE TABLE t AS SELECT value AS x FROM generate_series(1, 50)")
        .await?
        .collect()
        .await?;
    s.sql("CACHE TABLE t").await?.collect().await?;
    let storage = s.storage();
    assert_eq!(storage.len(), 1, "{storage:?}");
    assert_eq!(storage[0].rows, 50, "computed now: {storage:?}");
    let sum = s.sql("SELECT sum(x) FROM t").await?.collect().await?;
    assert_eq!(sorted_rows(&sum)?, table(&[&["1275"]]));
    s.sql("CACHE LAZY TABLE odd AS SELECT x FROM t WHERE x % 2 = 1")
        .await?
        .collect()
        .await?;
    assert_eq!(s.storage().len(), 2);
    assert_eq!(
        s.storage()[1].cached_partitions,
        0,
        "lazy: not computed yet"
    );
    assert_eq!(s.sql("SELECT * FROM odd").await?.count().await?, 25);
    s.sql("UNCACHE TABLE t").await?.collect().await?;
    s.sql("UNCACHE TABLE IF EXISTS nothing")
        .await?
        .collect()
        .await?;
    assert_eq!(s.storage().len(), 1);
    let sum = s.sql("SELECT sum(x) FROM t").await?.collect().await?;
    assert_eq!(
        sorted_rows(&sum)?,
        table(&[&["1275"]]),
        "the table reads its source again"
    );
    let Err(err) = s.sql("UNCACHE TABLE t").await else {
        panic!("t is not cached any more");
    };
    assert!(err.to_string().contains("not cached"), "{err}");
    Ok(())
}
