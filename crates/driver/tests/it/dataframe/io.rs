//! Reading and writing files: CSV, JSON lines, Parquet, save modes, partitioning.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use ember_driver::functions::col;
use ember_driver::{Result, SaveMode};

use super::{error_of, people, session, sorted_rows, table};

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(|e| ember_driver::EmberError::io("tempdir", e))
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| ember_driver::EmberError::io(path.display(), e))
}

/// Sorted names of the entries of a directory.
fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = std::fs::read_dir(dir)
        .map_err(|e| ember_driver::EmberError::io(dir.display(), e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    names.sort();
    Ok(names)
}

const PEOPLE_ROWS: &[&[&str]] = &[
    &["1", "ann", "eng", "100"],
    &["2", "bob", "eng", "80"],
    &["3", "cid", "ops", "70"],
    &["4", "dan", "ops", "90"],
    &["5", "eve", "hr", "60"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_reads_header_and_delimiter_options() -> Result<()> {
    let s = session()?;
    let dir = tempdir()?;
    // Any extension works when the path names a file.
    let file = dir.path().join("people.txt");
    write_file(&file, "id;name\n1;ann\n2;bob\n")?;
    let df = s
        .read()
        .option("header", "true")
        .option("delimiter", ";")
        .csv(&path_str(&file))
        .await?;
    assert_eq!(df.columns(), vec!["id", "name"]);
    assert_eq!(df.schema().field(0).data_type(), &DataType::Int64);
    assert_eq!(
        sorted_rows(&df.collect().await?)?,
        table(&[&["1", "ann"], &["2", "bob"]])
    );

    // Without a header (Spark's default) the first line is data.
    let plain = dir.path().join("plain.csv");
    write_file(&plain, "1,ann\n2,bob\n")?;
    let df = s.read().csv(&path_str(&plain)).await?;
    assert_eq!(df.count().await?, 2);
    assert_eq!(df.columns().len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_with_a_given_schema_uses_it() -> Result<()> {
    let s = session()?;
    let dir = tempdir()?;
    let file = dir.path().join("n.csv");
    write_file(&file, "1,ann\n2,bob\n")?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Utf8, true),
        Field::new("who", DataType::Utf8, true),
    ]));
    let df = s.read().schema(schema).csv(&path_str(&file)).await?;
    assert_eq!(df.columns(), vec!["n", "who"]);
    assert_eq!(df.schema().field(0).data_type(), &DataType::Utf8);
    assert_eq!(
        sorted_rows(&df.collect().await?)?,
        table(&[&["1", "ann"], &["2", "bob"]])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_path_and_unknown_option_are_errors_naming_them() -> Result<()> {
    let s = session()?;
    let dir = tempdir()?;
    let missing = path_str(&dir.path().join("no_such_file.csv"));
    let err = error_of(s.read().csv(&missing).await);
    assert!(err.contains(&missing), "{err}");
    let err = error_of(s.read().parquet(&missing).await);
    assert!(err.contains(&missing), "{err}");

    let file = dir.path().join("a.csv");
    write_file(&file, "1\n")?;
    let err = error_of(
        s.read()
            .option("hedaer", "true")
            .csv(&path_str(&file))
            .await,
    );
    assert!(err.contains("hedaer"), "{err}");
    let err = error_of(s.read().option("header", "yes").csv(&path_str(&file)).await);
    assert!(err.contains("header") && err.contains("yes"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_are_read_one_object_per_row() -> Result<()> {
    let s = session()?;
    let dir = tempdir()?;
    let file = dir.path().join("people.json");
    write_file(
        &file,
        "{\"id\":1,\"name\":\"ann\"}\n{\"id\":2,\"name\":\"bob\"}\n{\"id\":3}\n",
    )?;
    let df = s.read().json(&path_str(&file)).await?;
    let df = df.select(vec![col("id"), col("name")])?;
    assert_eq!(
        sorted_rows(&df.collect().await?)?,
        table(&[&["1", "ann"], &["2", "bob"], &["3", "null"]])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_round_trips_through_write() -> Result<()> {
    let s = session()?;
    let dir = tempdir()?;
    let out = path_str(&dir.path().join("people"));
    people(&s)?.write().parquet(&out).await?;
    assert!(
        entries(dir.path().join("people").as_path())?
            .iter()
            .all(|f| f.ends_with(".parquet"))
    );
    let back = s.read().parquet(&out).await?;
    assert_eq!(back.columns(), vec!["id", "name", "dept", "salary"]);
    assert_eq!(sorted_rows(&back.collect().await?)?, table(PEOPLE_ROWS));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_json_round_trip_through_write() -> Result<()> {
    let s = session()?;
    let dir = tempdir()?;
    let csv = path_str(&dir.path().join("csv"));
    people(&s)?
        .write()
        .option("header", true)
        .option("delimiter", "|")
        .csv(&csv)
        .await?;
    let back = s
        .read()
        .option("header", true)
        .option("sep", "|")
        .csv(&csv)
        .await?;
    assert_eq!(back.columns(), vec!["id", "name", "dept", "salary"]);
    assert_eq!(sorted_rows(&back.collect().await?)?, table(PEOPLE_ROWS));

    let json = path_str(&dir.path().join("json"));
    people(&s)?.write().json(&json).await?;
    let back = s.read().json(&json).await?.select(vec![
        col("id"),
        col("name"),
        col("dept"),
        col("salary"),
    ])?;
    assert_eq!(sorted_rows(&back.collect().await?)?, table(PEOPLE_ROWS));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_mode_error_if_exists_refuses_a_non_empty_path() -> Result<()> {
    let s = session()?;
    let dir = tempdir()?;
    let out = path_str(&dir.path().join("t"));
    people(&s)?.write().parquet(&out).await?;
    let err = error_of(
        people(&s)?
            .write()
            .mode(SaveMode::ErrorIfExists)
            .parquet(&out)
            .await,
    );
    assert!(
        err.contains(&out) && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(s.read().parquet(&out).await?.count().await?, 5);

    // An existing but empty directory is not data: writing into it is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).map_err(|e| ember_driver::EmberError::io("mkdir", e))?;
    people(&s)?.write().parquet(&path_str(&empty)).await?;
    assert_eq!(s.read().parquet(&path_str(&empty)).await?.count().await?, 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_mode_append_adds_files() -> Result<()> {
    let s = session()?;
    let dir = tempdir()?;
    let out = path_str(&dir.path().join("t"));
    people(&s)?
        .write()
        .mode(SaveMode::Append)
        .parquet(&out)
        .await?;
    people(&s)?
        .write()
        .mode(SaveMode::Append)
        .parquet(&out)
        .await?;
    assert_eq!(s.read().parquet(&out).await?.count().await?, 10);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_mode_overwrite_replaces_existing_data() -> Result<()> {
    let s = session()?;
    let dir = tempdir()?;
    let out = path_str(&dir.path().join("t"));
    people(&s)?
        .write()
        .mode(SaveMode::Append)
        .parquet(&out)
        .await?;
    people(&s)?
        .write()
        .mode(SaveMode::Append)
        .parquet(&out)
        .await?;
    let two = people(&s)?.filter(col("dept").eq(ember_driver::lit("eng")))?;
    two.write().mode(SaveMode::Overwrite).parquet(&out).await?;
    let back = s.read().parquet(&out).await?.select(vec![col("name")])?;
    assert_eq!(
        sorted_rows(&back.collect().await?)?,
        table(&[&["ann"], &["bob"]])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_mode_ignore_leaves_existing_data_alone() -> Result<()> {
    let s = session()?;
    let dir = tempdir()?;
    let out = path_str(&dir.path().join("t"));
    // Nothing there yet: Ignore writes.
    people(&s)?
        .write()
        .mode(SaveMode::Ignore)
        .parquet(&out)
        .await?;
    assert_eq!(s.read().parquet(&out).await?.count().await?, 5);
    let before = entries(dir.path().join("t").as_path())?;
    // Data there: Ignore does nothing and succeeds.
    people(&s)?
        .write()
        .mode(SaveMode::Ignore)
        .parquet(&out)
        .await?;
    assert_eq!(entries(dir.path().join("t").as_path())?, before);
    assert_eq!(s.read().parquet(&out).await?.count().await?, 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_by_writes_hive_style_directories() -> Result<()> {
    let s = session()?;
    let dir = tempdir()?;
    let root = dir.path().join("by_dept");
    people(&s)?
        .write()
        .partition_by(&["dept"])
        .parquet(&path_str(&root))
        .await?;
    assert_eq!(entries(&root)?, vec!["dept=eng", "dept=hr", "dept=ops"]);
    let eng_dir = root.join("dept=eng");
    let files = entries(&eng_dir)?;
    assert!(
        !files.is_empty() && files.iter().all(|f| f.ends_with(".parquet")),
        "{files:?}"
    );

    // The partition column lives in the directory name, not in the files.
    let eng = s.read().parquet(&path_str(&eng_dir)).await?;
    assert_eq!(eng.columns(), vec!["id", "name", "salary"]);
    assert_eq!(
        sorted_rows(&eng.collect().await?)?,
        table(&[&["1", "ann", "100"], &["2", "bob", "80"]])
    );

    let err = error_of(
        people(&s)?
            .write()
            .partition_by(&["nope"])
            .parquet(&path_str(&dir.path().join("bad")))
            .await,
    );
    assert!(err.contains("nope"), "{err}");
    assert!(!dir.path().join("bad").exists());
    Ok(())
}
