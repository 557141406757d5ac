//! A program's own functions run on its executors; an executor without them is
//! refused.

use super::*;

fn add_one() -> datafusion::logical_expr::ScalarUDF {
    use arrow::array::AsArray;
    use datafusion::logical_expr::ColumnarValue;
    datafusion::logical_expr::create_udf(
        "add_one",
        vec![arrow::datatypes::DataType::Int64],
        arrow::datatypes::DataType::Int64,
        datafusion::logical_expr::Volatility::Immutable,
        std::sync::Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let plus: arrow::array::Int64Array = arrays[0]
                .as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .map(|v| v.map(|v| v + 1))
                .collect();
            Ok(ColumnarValue::Array(std::sync::Arc::new(plus)))
        }),
    )
}

/// A batch function that tags each row with where it ran.
fn tag_with(
    place: &'static str,
) -> impl Fn(
    arrow::record_batch::RecordBatch,
) -> datafusion::error::Result<arrow::record_batch::RecordBatch>
+ Send
+ Sync
+ 'static {
    move |batch| {
        let tags = arrow::array::StringArray::from(vec![place; batch.num_rows()]);
        Ok(arrow::record_batch::RecordBatch::try_new(
            tagged_schema(),
            vec![batch.column(0).clone(), std::sync::Arc::new(tags)],
        )?)
    }
}

fn tagged_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, true),
        Field::new("ran_on", DataType::Utf8, false),
    ]))
}

#[test]
fn a_programs_functions_run_on_its_executors_and_a_lacking_executor_is_refused() {
    cluster_runtime().block_on(async {
        let data = tpch_sf01();
        let work = tempfile::tempdir().unwrap();
        let port = free_port();
        let driver_log = work.path().join("driver.log");
        let _driver = start_driver(port, &driver_log, &[]);
        let driver_url = format!("http://127.0.0.1:{port}");

        // This test program is an executor with its own functions.
        let registry = ember::executor::Registry::new()
            .with_udf(add_one())
            .with_batch_fn("tag", tagged_schema(), tag_with("executor"));
        let config = ember::executor::ExecutorConfig::new(&driver_url, work.path().join("own"));
        let executor = ember::executor::start(config, registry).await.unwrap();

        // The client knows the functions' signatures; their bodies run on executors.
        let client = ember::Session::builder()
            .master(format!("ember://127.0.0.1:{port}"))
            .security(ember::Security::none())
            .build()
            .unwrap();
        client.register_udf(add_one());
        client.register_batch_fn("tag", tagged_schema(), tag_with("client"));
        ember::tpch::register_tables(client.context(), &data)
            .await
            .unwrap();
        let rows = client
            .sql("SELECT add_one(CAST(n_nationkey AS BIGINT)) AS n FROM nation ORDER BY n")
            .await
            .unwrap()
            .map_batches("tag")
            .unwrap()
            .collect()
            .await
            .unwrap();
        let lines = sorted_lines(&rows);
        assert!(
            lines.iter().any(|l| l.contains("| 25 | executor |")),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains("client")), "{lines:?}");

        // An executor without them joins: the driver refuses the job up front.
        let registered = count_log(&driver_log, &["executor registered"]);
        let _plain = start_executors(&driver_url, &work.path().join("plain"), 1);
        wait_for_log(&driver_log, &["executor registered"], registered, 30);
        let err = client
            .sql("SELECT add_one(CAST(n_nationkey AS BIGINT)) FROM nation")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'add_one'") && err.contains("does not have"),
            "{err}"
        );
        // Built-in functions still run everywhere.
        let n = client
            .sql("SELECT count(*) FROM nation WHERE upper(n_name) = n_name")
            .await
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(n, 1);
        executor.stop();
    });
}
