//! A cached frame's partitions stay on the executors that computed them (in their
//! memory, or on their disks for `DiskOnly`), are read by later jobs, also from the
//! other executor, and those an executor takes with it when it dies are recomputed.

use ember_driver::StorageLevel;

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
        assert!(
            storage[0].memory_bytes > 0 && storage[0].disk_bytes == 0,
            "in the executors' memory: {storage:?}"
        );
        let dag = driver.explain_stages(frame.logical_plan()).await.unwrap();
        assert!(dag.contains("cached: read, not run"), "{dag}");

        // One executor dies: its partitions are forgotten, recomputed on the next read.
        executors.0[0].kill().unwrap();
        wait_for_slots(&driver, 1, 30, "the lost executor was not noticed").await;
        // The scheduler hears of the loss just after the slots go.
        let waiting = std::time::Instant::now();
        while driver.storage()[0].cached_partitions == storage[0].partitions {
            assert!(
                waiting.elapsed() < std::time::Duration::from_secs(10),
                "lost partitions are forgotten: {:?}",
                driver.storage()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let again = driver.sql(summary).await.unwrap().collect().await.unwrap();
        assert_eq!(sorted_lines(&again), sorted_lines(&first));
        let storage = driver.storage();
        assert_eq!(
            storage[0].cached_partitions, storage[0].partitions,
            "{storage:?}"
        );
    });
}

#[test]
fn each_storage_level_keeps_partitions_where_it_says_and_later_jobs_read_them() {
    cluster_runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let (driver, _executors) = tpch_cluster(&[], 2, &[], work.path()).await;
        let query = "SELECT o_orderpriority, count(*) AS n FROM f GROUP BY 1 ORDER BY 1";
        let mut answers = vec![];
        for (name, level) in [
            ("memory_only", StorageLevel::MemoryOnly),
            ("disk_only", StorageLevel::DiskOnly),
        ] {
            let frame = driver
                .sql("SELECT o_orderkey, o_orderpriority FROM orders")
                .await
                .unwrap()
                .persist(level)
                .unwrap();
            frame.create_or_replace_temp_view("f").unwrap();
            answers.push(driver.sql(query).await.unwrap().collect().await.unwrap());
            let view = driver
                .storage()
                .into_iter()
                .find(|v| v.storage_level == level)
                .unwrap_or_else(|| panic!("{name}: not listed"));
            assert_eq!(view.cached_partitions, view.partitions, "{name}: {view:?}");
            match level {
                StorageLevel::DiskOnly => {
                    assert!(view.memory_bytes == 0 && view.disk_bytes > 0, "{view:?}")
                }
                _ => assert!(view.memory_bytes > 0 && view.disk_bytes == 0, "{view:?}"),
            }
            let dag = driver.explain_stages(frame.logical_plan()).await.unwrap();
            assert!(dag.contains("cached: read, not run"), "{name}: {dag}");
            answers.push(driver.sql(query).await.unwrap().collect().await.unwrap());
            frame.unpersist().unwrap();
        }
        let lines: Vec<_> = answers.iter().map(|a| sorted_lines(a)).collect();
        assert!(lines.iter().all(|l| *l == lines[0]), "{lines:?}");
        assert!(
            lines[0].iter().any(|l| l.contains("1-URGENT"))
                && lines[0].iter().any(|l| l.contains("5-LOW")),
            "{lines:?}"
        );
    });
}

/// `ember sql` against a driver: CACHE TABLE runs in the client's session on the
/// driver, later queries of the client read the cached partitions, UNCACHE TABLE
/// forgets them (the driver's storage API says so each time).
#[test]
fn a_cli_client_caches_a_table_on_the_driver_and_reads_it_back() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let ui_port = free_port();
    let driver_log = work.path().join("driver.log");
    let _driver = start_driver(port, &driver_log, &["--ui-port", &ui_port.to_string()]);
    let _executors = start_executors(&format!("http://127.0.0.1:{port}"), work.path(), 2);
    wait_for_log(&driver_log, &["executor registered"], 1, 30);
    let ui: std::net::SocketAddr = format!("127.0.0.1:{ui_port}").parse().unwrap();
    let run = |statements: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
        command.args(["sql", "--master", &format!("ember://127.0.0.1:{port}")]);
        command.args(["--format", "csv"]).env_remove("EMBER_SECRET");
        for s in statements {
            command.args(["-e", s]);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{statements:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // random() computed again would give other sums: equal sums were read from the
    // cached partitions.
    let query = "SELECT count(*) AS n, sum(r) AS s FROM t";
    let out = run(&[
        "CACHE TABLE t AS SELECT random() AS r FROM (SELECT unnest(range(1000)) AS x)",
        query,
        query,
    ]);
    let answers: Vec<&str> = out.lines().filter(|l| l.starts_with("1000,")).collect();
    assert_eq!(answers.len(), 2, "{out}");
    assert_eq!(
        answers[0], answers[1],
        "the second query recomputed t: {out}"
    );
    let storage = crate::ui::get_json(ui, "/api/v1/storage");
    let frames = storage.as_array().unwrap();
    assert_eq!(frames.len(), 1, "{storage}");
    assert_eq!(
        frames[0]["cached_partitions"], frames[0]["partitions"],
        "{storage}"
    );
    // Another client session has no table t of its own; this one uncaches it.
    let out = run(&["CACHE TABLE u AS SELECT 1 AS y", "UNCACHE TABLE u"]);
    assert!(out.is_empty(), "{out}");
    let storage = crate::ui::get_json(ui, "/api/v1/storage");
    assert_eq!(storage.as_array().unwrap().len(), 1, "{storage}");
}

/// A client program's `persist()` on a driver: the driver keeps the frame, the
/// client's later actions read it, `unpersist()` makes them compute it again.
#[test]
fn a_client_programs_persisted_frame_is_kept_on_the_driver() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let driver_log = work.path().join("driver.log");
    let _driver = start_driver(port, &driver_log, &[]);
    let _executors = start_executors(&format!("http://127.0.0.1:{port}"), work.path(), 2);
    wait_for_log(&driver_log, &["executor registered"], 1, 30);
    cluster_runtime().block_on(async {
        let client = ember_driver::Session::builder()
            .master(format!("ember://127.0.0.1:{port}"))
            .build()
            .unwrap();
        let frame = client
            .sql("SELECT random() AS r FROM (SELECT unnest(range(1000)) AS x)")
            .await
            .unwrap()
            .persist(StorageLevel::MemoryOnly)
            .unwrap();
        // random() computed again gives other values.
        let values =
            |f: ember_driver::DataFrame| async move { sorted_lines(&f.collect().await.unwrap()) };
        let first = values(frame.clone()).await;
        assert!(first.len() >= 1000, "a line a row: {}", first.len());
        assert_eq!(
            values(frame.clone()).await,
            first,
            "read from the driver's cache"
        );
        let again = frame.unpersist().unwrap();
        assert_ne!(values(again).await, first, "computed again after unpersist");
    });
}
