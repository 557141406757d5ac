//! Tables at object store URLs: a Parquet directory served over WebDAV (rclone, a
//! real server on 127.0.0.1) reads through DataFusion's table providers, the
//! session's object store registry making the client on first use.

use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use ember_driver::Session;

use crate::stream_state::{lines, serve_webdav};

fn write_parquet(path: &std::path::Path, from: i64, to: i64) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(from..to)),
            Arc::new(StringArray::from_iter_values(
                (from..to).map(|i| format!("n{i}")),
            )),
        ],
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_table_in_an_object_store_reads_like_a_local_one() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("t")).unwrap();
    write_parquet(&root.path().join("t/part-0.parquet"), 0, 600);
    write_parquet(&root.path().join("t/part-1.parquet"), 600, 1000);
    let dav = serve_webdav(root.path());
    let session = Session::builder().master("local[2]").build().unwrap();
    session
        .sql(&format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}/t/'",
            dav.url
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        lines(
            &session,
            "SELECT CAST(count(*) AS VARCHAR) || ' ' || CAST(sum(x) AS VARCHAR) || ' ' || max(name) FROM t"
        )
        .await,
        vec!["1000 499500 n999"]
    );
    // A server that is not there: an error that names the location, not a hang.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = format!("http://127.0.0.1:{port}/t/");
    let err = async {
        session
            .sql(&format!(
                "CREATE EXTERNAL TABLE g STORED AS PARQUET LOCATION '{gone}'"
            ))
            .await?
            .collect()
            .await
    };
    let err = tokio::time::timeout(std::time::Duration::from_secs(60), err)
        .await
        .expect("an answer, not a hang")
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// `write()` to a directory in an object store honours the save modes, and what it
/// wrote reads back from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_written_to_an_object_store_reads_back_and_keeps_the_save_modes() {
    use ember_driver::SaveMode;
    let root = tempfile::tempdir().unwrap();
    let dav = serve_webdav(root.path());
    let session = Session::builder().master("local[2]").build().unwrap();
    let out = format!("{}/out/", dav.url);
    let rows = |n: i64| {
        let session = session.clone();
        async move {
            session
                .sql(&format!(
                    "SELECT x, x % 3 AS k FROM (SELECT unnest(range({n})) AS x)"
                ))
                .await
        }
    };
    rows(100)
        .await
        .unwrap()
        .write()
        .parquet(&out)
        .await
        .unwrap();
    assert!(root.path().join("out").read_dir().unwrap().next().is_some());
    let count = |session: &Session| {
        let out = out.clone();
        let session = session.clone();
        async move {
            session
                .read()
                .parquet(&out)
                .await
                .unwrap()
                .count()
                .await
                .unwrap()
        }
    };
    assert_eq!(count(&session).await, 100);
    let again = rows(10)
        .await
        .unwrap()
        .write()
        .parquet(&out)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    rows(10)
        .await
        .unwrap()
        .write()
        .mode(SaveMode::Append)
        .parquet(&out)
        .await
        .unwrap();
    assert_eq!(count(&session).await, 110);
    rows(7)
        .await
        .unwrap()
        .write()
        .mode(SaveMode::Overwrite)
        .parquet(&out)
        .await
        .unwrap();
    assert_eq!(count(&session).await, 7);
}
