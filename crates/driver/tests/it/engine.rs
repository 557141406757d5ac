//! The stage scheduler end to end: stages, shuffles, retries, failures, concurrency.

use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array};
use arrow::record_batch::RecordBatch;
use ember_driver::{EmberError, Session};

fn session(master: &str, config: &[(&str, &str)]) -> Session {
    let mut b = Session::builder().master(master);
    for (k, v) in config {
        b = b.config(*k, *v);
    }
    b.build().expect("session")
}

async fn numbers(session: &Session, rows: i64) {
    session
        .sql(&format!(
            "CREATE OR REPLACE TABLE nums AS SELECT value AS n, value % 7 AS k FROM generate_series(1, {rows})"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
}

fn i64_column(batches: &[RecordBatch], col: usize) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column(col)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int64");
            (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

const GROUPED: &str = "SELECT k, count(*) AS c, sum(n) AS s FROM nums GROUP BY k ORDER BY k";

fn expected_groups(rows: i64) -> Vec<(i64, i64, i64)> {
    (0..7)
        .map(|k| {
            let ns: Vec<i64> = (1..=rows).filter(|n| n % 7 == k).collect();
            (k, ns.len() as i64, ns.iter().sum())
        })
        .collect()
}

async fn grouped(session: &Session) -> Result<Vec<(i64, i64, i64)>, EmberError> {
    let batches = session.sql(GROUPED).await?.collect().await?;
    let (k, c, s) = (
        i64_column(&batches, 0),
        i64_column(&batches, 1),
        i64_column(&batches, 2),
    );
    Ok(k.into_iter()
        .zip(c)
        .zip(s)
        .map(|((k, c), s)| (k, c, s))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_by_runs_as_several_stages_and_gives_exact_sums() {
    for master in ["local[1]", "local[3]"] {
        let s = session(master, &[]);
        numbers(&s, 10_000).await;
        assert_eq!(
            grouped(&s).await.unwrap(),
            expected_groups(10_000),
            "{master}"
        );
        if master == "local[1]" {
            continue; // one partition: nothing to exchange
        }
        let plan = s.sql(GROUPED).await.unwrap();
        let dag = s.explain_stages(plan.logical_plan()).await.unwrap();
        assert!(
            dag.contains("Stage 1:") && dag.contains("-> hash("),
            "{dag}"
        );
        assert!(dag.contains("-> result"), "{dag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffle_through_disk_gives_the_same_rows_as_memory() {
    for compression in ["auto", "lz4", "zstd", "none"] {
        let s = session(
            "local[2]",
            &[
                ("ember.shuffle.memory_budget", "0"),
                ("ember.shuffle.compression", compression),
            ],
        );
        numbers(&s, 5_000).await;
        assert_eq!(
            grouped(&s).await.unwrap(),
            expected_groups(5_000),
            "{compression}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_fails_twice_is_retried_and_the_job_completes() {
    let s = session("local[2]", &[]);
    numbers(&s, 1_000).await;
    s.sql("SET ember.test.fail_tasks = '1:2'").await.unwrap();
    assert_eq!(grouped(&s).await.unwrap(), expected_groups(1_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_always_fails_ends_the_job_quickly_with_its_error() {
    let s = session("local[2]", &[("ember.task.max_failures", "3")]);
    numbers(&s, 1_000).await;
    s.sql("SET ember.test.fail_tasks = '1:always'")
        .await
        .unwrap();
    let started = Instant::now();
    let err = grouped(&s).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(err.contains("failed 3 time(s)"), "{err}");
    assert!(err.contains("injected failure in stage 1"), "{err}");
    // The session keeps working after a failed job.
    s.sql("SET ember.test.fail_tasks = ''").await.unwrap();
    assert_eq!(grouped(&s).await.unwrap(), expected_groups(1_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_error_fails_the_job_without_retrying() {
    let s = session("local[2]", &[]);
    numbers(&s, 100).await;
    let err = s
        .sql("SELECT k, sum(CAST(concat('x', n) AS BIGINT)) FROM nums GROUP BY k")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("failed 1 time(s)"), "{err}");
    assert!(err.to_lowercase().contains("cast"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_jobs_from_several_threads_run_at_once() {
    let s = session("local[2]", &[]);
    numbers(&s, 20_000).await;
    let mut handles = Vec::new();
    for _ in 0..6 {
        let s = s.clone();
        handles.push(tokio::spawn(async move { grouped(&s).await.unwrap() }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), expected_groups(20_000));
    }
}

#[test]
fn dropping_a_running_job_cancels_it_and_frees_the_slots() {
    // A runtime of its own, so that the CPU its threads use can be told apart from
    // the other tests running in this process.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CANCEL_TEST_THREADS)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(cancel_a_running_job());
}

const CANCEL_TEST_THREADS: &str = "cancel-test";

async fn cancel_a_running_job() {
    let s = session("local[1]", &[]);
    numbers(&s, 30_000).await;
    // 900 million joined rows: minutes of work for one slot.
    let slow = s
        .sql("SELECT count(*) FROM nums a CROSS JOIN nums b WHERE a.n + b.n > 0")
        .await
        .unwrap();
    let mut progress = s.progress();
    let job = tokio::spawn(async move { slow.collect().await });
    tokio::time::timeout(
        Duration::from_secs(30),
        progress.wait_for(|p| !p.stages.is_empty()),
    )
    .await
    .expect("a stage starts")
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    job.abort();
    assert!(job.await.unwrap_err().is_cancelled());
    // The only slot is free again: the next job runs at once, not after the cross join.
    let started = Instant::now();
    assert_eq!(grouped(&s).await.unwrap(), expected_groups(30_000));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // And the killed task has stopped computing: the process is idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = runtime_cpu_seconds();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = runtime_cpu_seconds() - cpu;
    assert!(
        busy < 0.5,
        "{busy:.2}s of CPU in 1s after the job was cancelled"
    );
}

/// User + system CPU time of this test's runtime threads, from /proc/self/task.
fn runtime_cpu_seconds() -> f64 {
    let mut ticks = 0.0;
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let Ok(stat) = std::fs::read_to_string(entry.unwrap().path().join("stat")) else {
            continue; // the thread ended
        };
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        if &stat[open + 1..close] != CANCEL_TEST_THREADS {
            continue;
        }
        // After the thread name, utime and stime are the 12th and 13th fields.
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        ticks += fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    }
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_queries_run_through_in_process_plans() {
    let s = session("local[2]", &[]);
    numbers(&s, 10).await;
    let batches = s
        .sql("SELECT table_name FROM information_schema.tables WHERE table_name = 'nums'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let shown = s.sql("SHOW TABLES").await.unwrap().collect().await.unwrap();
    assert!(shown.iter().map(|b| b.num_rows()).sum::<usize>() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_table_as_select_and_insert_run_as_ember_jobs() {
    let s = session("local[2]", &[]);
    numbers(&s, 100).await;
    // Every task of stage 1 fails: a statement that runs as an ember job reports it.
    s.sql("SET ember.test.fail_tasks = '1:always'")
        .await
        .unwrap();
    let err = s
        .sql("CREATE TABLE sums AS SELECT k, sum(n) AS s FROM nums GROUP BY k")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("injected failure in stage 1"), "{err}");
    s.sql("SET ember.test.fail_tasks = ''").await.unwrap();
    s.sql("CREATE TABLE sums AS SELECT k, sum(n) AS s FROM nums GROUP BY k")
        .await
        .unwrap();
    s.sql("INSERT INTO sums VALUES (100, 1)")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let batches = s
        .sql("SELECT count(*), sum(s) FROM sums")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(i64_column(&batches, 0), vec![8]);
    assert_eq!(i64_column(&batches, 1), vec![5050 + 1]);
}

/// A chain of additions is as deep as it is long; planning it used to overflow a
/// runtime thread's stack and abort the process. Planning runs on its own deep stack;
/// the runtime's threads have the stack the `ember` binary gives its engine threads,
/// for the tasks that evaluate the expression (and a debug build's deep clones).
#[test]
fn a_long_sql_expression_is_planned_or_refused_never_a_stack_overflow() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(16 << 20)
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(runtime.spawn(long_sql_expressions()))
        .unwrap();
}

async fn long_sql_expressions() {
    let session = session("local[2]", &[]);
    let chain = |terms: usize| {
        format!(
            "SELECT a + {} AS x FROM (VALUES (1), (2)) t(a)",
            vec!["1"; terms].join("+")
        )
    };
    let batches = session
        .sql(&chain(1500))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut sums = i64_column(&batches, 0);
    sums.sort();
    assert_eq!(sums, vec![1501, 1502]);
    for terms in [2500, 10_000, 100_000] {
        let err = session.sql(&chain(terms)).await.unwrap_err();
        assert!(
            err.to_string().contains("ember.sql.max_expression_depth"),
            "{terms} terms: {err}"
        );
    }
    // Deeper than the parser's own limit on nesting (parentheses), also an error.
    let parens = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert!(session.sql(&parens).await.is_err());
    // The limit is a setting, and the session works on.
    session
        .sql("SET ember.sql.max_expression_depth = 100")
        .await
        .unwrap();
    assert!(session.sql(&chain(150)).await.is_err());
    let one = session
        .sql("SELECT 1")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(one[0].num_rows(), 1);
}

/// A filter `d_year = 1999` makes `d_year` a constant below a hash exchange; DataFusion
/// plans the window above it relying on that, so the stage boundary must keep the fact
/// (TPC-DS q47 and q57 failed an assertion in the window operator without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_over_a_column_a_filter_made_constant_runs_across_a_stage_boundary() {
    let create = "CREATE TABLE dd AS SELECT value AS d_date_sk, 1998 + value % 3 AS d_year, \
                  value % 12 AS d_moy, value % 5 AS a, value % 7 AS b, value % 11 AS c \
                  FROM generate_series(1, 2000)";
    let query = "SELECT d_year, d_moy, a, b, c, s, avg(s) OVER (PARTITION BY a, b, c, d_moy, d_year) AS m \
                 FROM (SELECT d_year, d_moy, a, b, c, sum(d_date_sk) AS s FROM dd \
                       WHERE d_year = 1999 GROUP BY d_year, d_moy, a, b, c) \
                 ORDER BY a, b, c, d_moy";
    let direct = datafusion::prelude::SessionContext::new();
    direct.sql(create).await.unwrap().collect().await.unwrap();
    let expected = direct.sql(query).await.unwrap().collect().await.unwrap();
    let expected = arrow::util::pretty::pretty_format_batches(&expected)
        .unwrap()
        .to_string();
    for master in ["local[1]", "local[2]", "local[3]", "local[8]"] {
        let session = session(master, &[]);
        session.sql(create).await.unwrap().collect().await.unwrap();
        let got = session.sql(query).await.unwrap().collect().await.unwrap();
        let got = arrow::util::pretty::pretty_format_batches(&got)
            .unwrap()
            .to_string();
        assert_eq!(got, expected, "{master}");
    }
}
