//! A query survives losing an executor midway.

use super::*;

#[test]
fn a_query_survives_losing_an_executor_midway() {
    cluster_runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let config = [
            ("ember.executor.timeout", "3"),
            ("ember.cluster.executor_wait", "5"),
        ];
        let (driver, mut executors) = tpch_cluster(&config, 3, &[], work.path()).await;
        let address = driver.driver_address().unwrap().to_string();
        let data = tpch_sf01();

        let sql = ember_driver::tpch::query(18).unwrap();
        // Stage 2's tasks wait a second, so every executor is running one when the
        // kill comes: the job cannot finish without recovering the lost task.
        driver
            .sql("SET ember.test.delay_tasks = '2:1000'")
            .await
            .unwrap();
        let query = driver.sql(&sql).await.unwrap();
        let mut progress = driver.progress();
        let job = tokio::spawn(async move { query.collect().await });
        // Once the first shuffle stage is done, kill an executor that holds its output.
        tokio::time::timeout(
            std::time::Duration::from_secs(120),
            progress.wait_for(|p| p.stages.iter().any(|s| s.stage == 2 && s.running == 3)),
        )
        .await
        .expect("the query gets past its first stage")
        .unwrap();
        executors.0[0].kill().unwrap();
        let rows = job
            .await
            .unwrap()
            .expect("the query completes without the lost executor");

        let local = ember_driver::Session::builder()
            .master("local[2]")
            .build()
            .unwrap();
        ember_driver::tpch::register_tables(local.context(), &data)
            .await
            .unwrap();
        let expected = local.sql(&sql).await.unwrap().collect().await.unwrap();
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&rows)
                .unwrap()
                .to_string(),
            arrow::util::pretty::pretty_format_batches(&expected)
                .unwrap()
                .to_string()
        );
        // The driver noticed: two executors' slots are left.
        wait_for_slots(&driver, 2, 30, "the lost executor was not noticed").await;

        // Every executor killed during a job: it fails with a clear error after the grace
        // period instead of waiting forever.
        driver
            .sql("SET ember.test.delay_tasks = '1:5000'")
            .await
            .unwrap();
        let query = driver.sql(&sql).await.unwrap();
        let job = tokio::spawn(async move { query.collect().await });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        for e in &mut executors.0 {
            let _ = e.kill();
        }
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(std::time::Duration::from_secs(60), job)
            .await
            .expect("the job ends")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains("every executor was lost"), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );

        // A new executor, and the next query succeeds.
        let _new = start_executors(&address, &work.path().join("new"), 1);
        driver.sql("SET ember.test.delay_tasks = ''").await.unwrap();
        let rows = driver.sql(&sql).await.unwrap().collect().await.unwrap();
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&rows)
                .unwrap()
                .to_string(),
            arrow::util::pretty::pretty_format_batches(&expected)
                .unwrap()
                .to_string()
        );
    });
}
