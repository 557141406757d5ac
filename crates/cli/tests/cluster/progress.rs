//! A remote client sees the stage progress of its jobs on the driver.

use super::*;

#[test]
fn a_client_sees_the_stage_progress_of_its_jobs_on_the_driver() {
    cluster_runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let (driver, _executors) = driver_cluster(&[], 1, &[], work.path()).await;
        let address = driver.driver_address().unwrap().to_string();
        let port = address.rsplit(':').next().unwrap();
        let client = ember_driver::Session::builder()
            .master(format!("ember://127.0.0.1:{port}"))
            .build()
            .unwrap();
        // The first stage's task waits, so the bars have something to show.
        client
            .sql("SET ember.test.delay_tasks = '1:1500'")
            .await
            .unwrap();
        let mut progress = client.progress();
        let query = client
            .sql("SELECT k, count(*) FROM (SELECT a % 5 AS k FROM (SELECT unnest(range(1000)) AS a)) GROUP BY k")
            .await
            .unwrap();
        let job = tokio::spawn(async move { query.collect().await });
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            progress.wait_for(|p| p.stages.iter().any(|s| s.total > 0 && s.running > 0)),
        )
        .await
        .expect("the client sees a running stage")
        .unwrap();
        assert_eq!(job.await.unwrap().unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 5);
        assert!(client.progress().borrow().stages.is_empty(), "the bars clear at the end");
    });
}
