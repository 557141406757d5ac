//! `ember stream`'s options and progress lines: options that make no sense are
//! refused, a topic whose offsets went back fails the query or (with
//! `--fail-on-data-loss false`) is read again from its start and the line says so,
//! and rows dropped as late are shown.

use std::path::Path;
use std::process::Output;

use ember_log::{Durability, Log, LogConfig, Producer, ProducerConfig, ProducerRecord};

use super::{ember, stderr};

/// Appends `values` to partition 0 of topic `events` in the log in `dir`, creating
/// it (one partition) if needed, or deleting and creating it again (`recreate`).
fn write_log(dir: &Path, values: &[String], recreate: bool) {
    let log = Log::open(
        dir,
        LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        },
    )
    .unwrap();
    if recreate {
        log.delete_topic("events").unwrap();
    }
    if log.topic("events").is_err() {
        log.create_topic("events", 1, None).unwrap();
    }
    let producer = Producer::new(log.clone(), ProducerConfig::default()).unwrap();
    for v in values {
        producer
            .send(ProducerRecord::new("events", v.clone()).partition(0))
            .unwrap();
    }
    producer.flush();
    log.sync().unwrap();
}

fn stream(log: &Path, sql: &str, checkpoint: &Path, extra: &[&str]) -> Output {
    let from = format!("log:{}:events", log.display());
    let checkpoint = checkpoint.display().to_string();
    let mut args = vec![
        "stream",
        "--master",
        "local[1]",
        "--from",
        &from,
        "--sql",
        sql,
        "--checkpoint",
        &checkpoint,
    ];
    args.extend_from_slice(extra);
    ember(&args)
}

/// The `batch N: ...` progress lines.
fn batch_lines(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with("batch "))
        .map(str::to_string)
        .collect()
}

#[test]
fn stream_refuses_options_that_make_no_sense() {
    let dir = tempfile::tempdir().unwrap();
    let log = format!("log:{}:events", dir.path().join("log").display());
    let json = format!("json:{}", dir.path().display());
    let cp = dir.path().join("cp").display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--from", &log, "--max-offsets-per-trigger", "0"],
            "--max-offsets-per-trigger 0: must be at least 1",
        ),
        (
            &["--from", &log, "--max-offsets-per-trigger", "-3"],
            "--max-offsets-per-trigger -3: must be at least 1",
        ),
        (
            &["--from", &log, "--trigger", "0ms"],
            "must be longer than 0",
        ),
        (
            &["--from", &log, "--trigger=-1s"],
            "--trigger -1s: expected",
        ),
        (
            &["--from", &format!("log:{}:", dir.path().display())],
            "a topic name is empty",
        ),
        (
            &["--from", "kafka:127.0.0.1:9092:a,,b"],
            "a topic name is empty",
        ),
        (
            &[
                "--from",
                &json,
                "--schema",
                "a STRING",
                "--max-files-per-trigger",
                "0",
            ],
            "--max-files-per-trigger 0: must be at least 1",
        ),
        (
            &[
                "--from",
                &json,
                "--schema",
                "a STRING",
                "--max-offsets-per-trigger",
                "5",
            ],
            "--max-offsets-per-trigger is for log: and kafka: sources",
        ),
        (&["--from", &log, "--to", "parquet:"], "--to parquet:"),
        (&["--from", &log, "--to", "kafka::out"], "--to kafka::out"),
        (&["--from", &log, "--fail-on-data-loss", "maybe"], "maybe"),
    ];
    for (args, expected) in cases {
        let mut all = vec![
            "stream",
            "--sql",
            "SELECT value FROM events",
            "--checkpoint",
            &cp,
        ];
        all.extend_from_slice(args);
        let out = ember(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = stderr(&out);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(batch_lines(&out).is_empty(), "{args:?} ran batches: {err}");
    }
}

#[test]
fn a_recreated_topic_fails_the_stream_or_is_read_again_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let (log, out, cp) = (
        dir.path().join("log"),
        dir.path().join("out"),
        dir.path().join("cp"),
    );
    let to = format!("json:{}", out.display());
    let sql = "SELECT CAST(value AS VARCHAR) AS v FROM events";
    let old: Vec<String> = (0..500).map(|i| format!("old-{i}")).collect();
    write_log(&log, &old, false);
    let first = stream(&log, sql, &cp, &["--to", &to]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(batch_lines(&first).len(), 1, "{}", stderr(&first));

    let new: Vec<String> = (0..100).map(|i| format!("new-{i}")).collect();
    write_log(&log, &new, true);
    // The default: an error naming the partition and both offsets, no batch.
    let failed = stream(&log, sql, &cp, &["--to", &to]);
    let err = stderr(&failed);
    assert!(!failed.status.success(), "{err}");
    assert!(
        err.contains("events-0 ends at offset 100, before offset 500")
            && err.contains("--fail-on-data-loss false"),
        "{err}"
    );
    assert!(batch_lines(&failed).is_empty(), "{err}");

    // Without it: the new records from offset 0, once, and the line says so.
    let lenient = stream(
        &log,
        sql,
        &cp,
        &["--to", &to, "--fail-on-data-loss", "false"],
    );
    let err = stderr(&lenient);
    assert!(lenient.status.success(), "{err}");
    let lines = batch_lines(&lenient);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("batch 1: 100 rows in, 100 rows out, data loss in 1 partition(s)"),
        "{err}"
    );
    let again = stream(
        &log,
        sql,
        &cp,
        &["--to", &to, "--fail-on-data-loss", "false"],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(batch_lines(&again).is_empty(), "{}", stderr(&again));

    let mut values = vec![];
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            values.extend(
                std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    values.sort();
    let mut expected: Vec<String> = old
        .iter()
        .chain(&new)
        .map(|v| format!(r#"{{"v":"{v}"}}"#))
        .collect();
    expected.sort();
    assert_eq!(values, expected);
}

#[test]
fn the_progress_line_shows_rows_dropped_as_late() {
    let dir = tempfile::tempdir().unwrap();
    let (log, cp) = (dir.path().join("log"), dir.path().join("cp"));
    // 2026-01-01T00:00:00Z, then a record 100 s earlier: behind the watermark the
    // first batch leaves (its time less 5 s).
    let base: i64 = 1_767_225_600_000;
    let records = [base, base - 100_000].map(|ts| format!(r#"{{"ts":{ts}}}"#));
    write_log(&log, &records, false);
    let sql = "SELECT w['start'] AS s, n FROM (\
        SELECT window(ts, '10 seconds') AS w, count(*) AS n FROM (\
          SELECT j['ts'] AS ts FROM (\
            SELECT from_json(value, 'ts TIMESTAMP', 'FAILFAST') AS j FROM events)) \
        WHERE with_watermark(ts, '5 seconds') \
        GROUP BY window(ts, '10 seconds'))";
    let out = stream(
        &log,
        sql,
        &cp,
        &["--to", "memory", "--max-offsets-per-trigger", "1"],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let lines = batch_lines(&out);
    assert!(lines.len() >= 2, "{err}");
    assert!(!lines[0].contains("late"), "{err}");
    assert!(
        lines[1].starts_with("batch 1: 1 rows in, 0 rows out, 1 late rows dropped"),
        "{err}"
    );
}
