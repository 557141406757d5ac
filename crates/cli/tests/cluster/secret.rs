//! A driver process with a cluster secret: clients and executors authenticate, bad
//! connections are refused and logged, and lost executors are recovered from.

use super::*;

#[test]
fn a_driver_process_with_a_secret_serves_clients_and_recovers_from_lost_executors() {
    cluster_runtime().block_on(async {
        let data = tpch_sf01();
        let work = tempfile::tempdir().unwrap();
        let secret_file = work.path().join("secret");
        std::fs::write(&secret_file, "correct horse battery staple\n").unwrap();
        let wrong_file = work.path().join("wrong");
        std::fs::write(&wrong_file, "wrong").unwrap();
        let secret = secret_file.to_str().unwrap();

        let port = free_port();
        let driver_log = work.path().join("driver.log");
        let mut processes = Processes(vec![
            Command::new(env!("CARGO_BIN_EXE_ember"))
                .args(["--log-level", "info", "driver", "--bind"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["--secret-file", secret])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&driver_log).unwrap())
                .spawn()
                .expect("ember driver starts"),
        ]);
        let driver_url = format!("http://127.0.0.1:{port}");
        let master = format!("ember://127.0.0.1:{port}");
        wait_for_log(&driver_log, &["driver listening"], 0, 30);

        let client = ember_driver::Session::builder()
            .master(&master)
            .security(Security::from_file_or_env(Some(&secret_file)).unwrap())
            .build()
            .unwrap();
        ember_driver::tpch::register_tables(client.context(), &data)
            .await
            .unwrap();
        // No executors yet: after the wait, a query is a clear error, not a hang.
        client
            .sql("SET ember.cluster.executor_wait = 1")
            .await
            .unwrap();
        let err = client
            .sql("SELECT count(*) FROM nation")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("no executors have registered"),
            "{err}"
        );
        client
            .sql("SET ember.cluster.executor_wait = 60")
            .await
            .unwrap();

        // A client or an executor with the wrong secret is refused, and the driver logs it.
        let intruder = ember_driver::Session::builder()
            .master(&master)
            .security(Security::with_secret("wrong").unwrap())
            .build()
            .unwrap();
        let err = intruder
            .sql("SELECT 1")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
        let refused = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["executor", "--driver", &driver_url, "--work-dir"])
            .arg(work.path().join("intruder"))
            .args(["--secret-file", wrong_file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!refused.status.success());
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(said.contains("secret"), "{said}");
        wait_for_log(&driver_log, &["refused a call with a wrong secret"], 0, 10);

        // Three executors with fixed ports, so garbage can be sent to one.
        let executor_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        for (i, p) in executor_ports.iter().enumerate() {
            let bind = format!("127.0.0.1:{p}");
            let more = start_executors_with(
                &driver_url,
                &work.path().join(format!("e{i}")),
                1,
                &["--secret-file", secret, "--bind", &bind],
            );
            processes.0.extend(std::mem::take(&mut { more }.0));
        }
        let datafusion = datafusion::prelude::SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(3),
        );
        ember_driver::tpch::register_tables(&datafusion, &data)
            .await
            .unwrap();
        // All 22 queries give the rows DataFusion gives on its own (compared as sorted
        // lines, so queries without ORDER BY may return rows in any order).
        for q in ember_driver::tpch::QUERY_NUMBERS {
            let sql = ember_driver::tpch::query(q).unwrap();
            let cluster = client.sql(&sql).await.unwrap().collect().await.unwrap();
            let expected = datafusion.sql(&sql).await.unwrap().collect().await.unwrap();
            assert_eq!(sorted_lines(&cluster), sorted_lines(&expected), "q{q}");
        }
        // Garbage to each gRPC port: the connection ends, the process keeps serving
        // (the queries below need both).
        send_garbage(port);
        send_garbage(executor_ports[0]);
        assert!(
            processes
                .0
                .iter_mut()
                .all(|p| p.try_wait().unwrap().is_none())
        );

        // SIGKILL an executor while q18's last stage runs: its map outputs of the stage
        // before are gone, the final task's fetch fails, and lineage recomputes them.
        let sql = ember_driver::tpch::query(18).unwrap();
        let expected = datafusion.sql(&sql).await.unwrap().collect().await.unwrap();
        // How many stages q18 has here (its final stage's id).
        client.sql(&sql).await.unwrap().collect().await.unwrap();
        let log = std::fs::read_to_string(&driver_log).unwrap();
        let last_job = log.lines().rfind(|l| l.contains("job submitted")).unwrap();
        let stages = last_job
            .rsplit("stages=")
            .next()
            .unwrap()
            .trim()
            .to_string();
        client
            .sql(&format!("SET ember.test.delay_tasks = '{stages}:3000'"))
            .await
            .unwrap();
        // Stages as planned: coalesced into one task, the stage before the last could
        // leave its one output on the executor that survives, and nothing to recompute.
        client
            .sql("SET ember.adaptive.enabled = false")
            .await
            .unwrap();
        let final_stage = format!("stage={stages} attempt=0");
        let started = count_log(&driver_log, &["stage started", &final_stage]);
        let query = client.sql(&sql).await.unwrap();
        let job = tokio::spawn(async move { query.collect().await });
        let log = driver_log.clone();
        tokio::task::spawn_blocking(move || {
            wait_for_log(&log, &["stage started", &final_stage], started, 120)
        })
        .await
        .unwrap();
        // The machine is gone with its disk: readers on this host cannot fall back to
        // the dead executor's files.
        processes.0[1].kill().unwrap();
        processes.0[1].wait().unwrap();
        std::fs::remove_dir_all(work.path().join("e0")).unwrap();
        let rows = job.await.unwrap().expect("q18 survives the lost executor");
        assert_eq!(sorted_lines(&rows), sorted_lines(&expected));
        let log = std::fs::read_to_string(&driver_log).unwrap();
        let recovery = &log[log.rfind("job submitted").unwrap()..];
        assert!(recovery.contains("recomputing"), "{recovery}");

        // SIGTERM an executor while a job runs: it finishes or hands back its tasks,
        // leaves, and the job completes without failing.
        client
            .sql("SET ember.test.delay_tasks = '2:1500'")
            .await
            .unwrap();
        let mark = std::fs::read_to_string(&driver_log).unwrap().len();
        let submitted = count_log(&driver_log, &["job submitted"]);
        let query = client.sql(&sql).await.unwrap();
        let job = tokio::spawn(async move { query.collect().await });
        let log = driver_log.clone();
        tokio::task::spawn_blocking(move || wait_for_log(&log, &["job submitted"], submitted, 60))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leaving = processes.0[2].id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &leaving])
                .status()
                .unwrap()
                .success()
        );
        let rows = job
            .await
            .unwrap()
            .expect("the job survives a decommissioned executor");
        assert_eq!(sorted_lines(&rows), sorted_lines(&expected));
        let status = processes.0[2].wait().unwrap();
        assert!(
            status.success(),
            "the executor exits cleanly on SIGTERM: {status}"
        );
        let log = std::fs::read_to_string(&driver_log).unwrap()[mark..].to_string();
        assert!(log.contains("executor leaving"), "{log}");
        assert!(!log.contains("job failed"), "{log}");

        // A client that stops waiting (Ctrl-C, a dropped future) cancels its job on
        // the driver, which frees the executors for the next query.
        client
            .sql("SET ember.test.delay_tasks = '1:60000'")
            .await
            .unwrap();
        let submitted = count_log(&driver_log, &["job submitted"]);
        let query = client.sql(&sql).await.unwrap();
        let job = tokio::spawn(async move { query.collect().await });
        let log = driver_log.clone();
        tokio::task::spawn_blocking(move || wait_for_log(&log, &["job submitted"], submitted, 60))
            .await
            .unwrap();
        job.abort();
        let log = driver_log.clone();
        tokio::task::spawn_blocking(move || {
            wait_for_log(&log, &["job failed", "was cancelled"], 0, 30)
        })
        .await
        .unwrap();
        client.sql("SET ember.test.delay_tasks = ''").await.unwrap();
        let n = client
            .sql("SELECT count(*) FROM region")
            .await
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(n, 1);
    });
}
