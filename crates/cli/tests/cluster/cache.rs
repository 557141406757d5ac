//! A cached frame's partitions stay on the executors that computed them, are read by
//! later jobs, and those an executor takes with it when it dies are recomputed.

use super::*;

#[test]
fn a_cached_frame_is_reused_and_survives_losing_an_executor() {
    cluster_runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let (driver, mut executors) =
            tpch_cluster(&[("ember.executor.timeout", "3")], 2, &[], work.path()).await;

        let frame = driver
            .sql(
                "SELECT l_returnflag, l_linestatus, l_quantity FROM lineitem WHERE l_quantity > 25",
            )
            .await
            .unwrap()
            .cache()
            .unwrap();
        let summary = "SELECT l_returnflag, l_linestatus, count(*) AS n, sum(l_quantity) AS q \
                       FROM f GROUP BY l_returnflag, l_linestatus ORDER BY 1, 2";
        frame.create_or_replace_temp_view("f").unwrap();
        let first = driver.sql(summary).await.unwrap().collect().await.unwrap();
        let storage = driver.storage();
        assert_eq!(storage.len(), 1, "{storage:?}");
        assert_eq!(
            storage[0].cached_partitions, storage[0].partitions,
            "{storage:?}"
        );
        assert_eq!(
            storage[0].executors.len(),
            2,
            "kept where computed: {storage:?}"
        );
        let dag = driver.explain_stages(frame.logical_plan()).await.unwrap();
        assert!(dag.contains("cached: read, not run"), "{dag}");

        // One executor dies: its partitions are forgotten, recomputed on the next read.
        executors.0[0].kill().unwrap();
        wait_for_slots(&driver, 1, 30, "the lost executor was not noticed").await;
        let kept = driver.storage()[0].cached_partitions;
        assert!(
            kept < storage[0].partitions,
            "lost partitions are forgotten: {kept}"
        );
        let again = driver.sql(summary).await.unwrap().collect().await.unwrap();
        assert_eq!(sorted_lines(&again), sorted_lines(&first));
        let storage = driver.storage();
        assert_eq!(
            storage[0].cached_partitions, storage[0].partitions,
            "{storage:?}"
        );
    });
}
