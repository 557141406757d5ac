//! Executors read tables from an object store themselves.

use super::*;

/// `rclone serve webdav` over `root` on a free port of 127.0.0.1, killed on drop.
fn serve_webdav(root: &Path) -> (Processes, String) {
    let port = free_port();
    let child = Command::new("rclone")
        .args(["serve", "webdav", "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rclone (Debian package rclone) serves WebDAV");
    let server = Processes(vec![child]);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "rclone listens"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, format!("http://127.0.0.1:{port}"))
}

/// A table in an object store is read by the executors themselves: each process
/// makes its own client from the URL (ember's object store registry).
#[test]
fn executors_read_a_table_from_an_object_store() {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("t")).unwrap();
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    for (part, range) in [(0, 0..500i64), (1, 500..1000)] {
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![std::sync::Arc::new(Int64Array::from_iter_values(range))],
        )
        .unwrap();
        let file =
            std::fs::File::create(root.path().join(format!("t/part-{part}.parquet"))).unwrap();
        let mut writer =
            datafusion::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
    let (_server, url) = serve_webdav(root.path());
    cluster_runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let (driver, _executors) = driver_cluster(&[], 2, &[], work.path()).await;
        driver
            .sql(&format!(
                "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{url}/t/'"
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let batches = driver
            .sql("SELECT x % 4 AS k, count(*) AS n, sum(x) AS s FROM t GROUP BY x % 4 ORDER BY k")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        for row in [
            "| 0 | 250 | 124500 |",
            "| 1 | 250 | 124750 |",
            "| 2 | 250 | 125000 |",
            "| 3 | 250 | 125250 |",
        ] {
            assert!(text.contains(row), "{row} in\n{text}");
        }
    });
}
