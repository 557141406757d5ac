//! `--table name=path`: registering files and directories as tables.

use std::path::Path;

use anyhow::{Context, Result, bail};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};

/// A file format ember can register by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    Parquet,
    Csv,
    Json,
}

impl FileFormat {
    fn from_path(path: &Path) -> Option<(FileFormat, &'static str)> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "parquet" => Some((FileFormat::Parquet, ".parquet")),
            "csv" => Some((FileFormat::Csv, ".csv")),
            "json" => Some((FileFormat::Json, ".json")),
            "ndjson" => Some((FileFormat::Json, ".ndjson")),
            _ => None,
        }
    }
}

/// Parses `name=path`.
pub fn parse_table_arg(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), path.to_string()))
        }
        _ => Err(format!("expected NAME=PATH, got '{arg}'")),
    }
}

/// Registers `path` as table `name`. A file's format comes from its extension; a
/// directory's from the extension of the files in it (all must share it). `path` may
/// be a URL of an object store (`s3://bucket/dir/`, `http(s)://` WebDAV) as well as a
/// local path or `file://` URL.
pub async fn register(ctx: &SessionContext, name: &str, path: &str) -> Result<()> {
    let path = path.strip_prefix("file://").unwrap_or(path);
    let p = Path::new(path);
    let (format, ext, url) = if path.contains("://") {
        store_format(ctx, path)
            .await
            .with_context(|| format!("table {name}"))?
    } else if p.is_dir() {
        let (format, ext) = directory_format(p).with_context(|| format!("table {name}"))?;
        // A trailing slash makes DataFusion list the directory.
        (format, ext, format!("{}/", path.trim_end_matches('/')))
    } else if p.is_file() {
        let (format, ext) = FileFormat::from_path(p).with_context(|| {
            format!("table {name}: cannot tell the format of {path}: expected .parquet, .csv, .json or .ndjson")
        })?;
        (format, ext, path.to_string())
    } else {
        bail!("table {name}: {path} does not exist");
    };
    let registered = match format {
        FileFormat::Parquet => {
            let options = ParquetReadOptions::default().file_extension(ext);
            ctx.register_parquet(name, &url, options).await
        }
        FileFormat::Csv => {
            let options = CsvReadOptions::new().has_header(true).file_extension(ext);
            ctx.register_csv(name, &url, options).await
        }
        FileFormat::Json => {
            let options = JsonReadOptions::default().file_extension(ext);
            ctx.register_json(name, &url, options).await
        }
    };
    registered.map_err(|e| anyhow::anyhow!("table {name} ({path}): {}", one_line(&e)))
}

fn one_line(e: &datafusion::error::DataFusionError) -> String {
    e.to_string().replace('\n', " ")
}

/// The format of a file or directory in an object store, and the URL to register
/// (a directory's with a trailing slash).
async fn store_format(
    ctx: &SessionContext,
    url: &str,
) -> Result<(FileFormat, &'static str, String)> {
    if let Some((format, ext)) = FileFormat::from_path(Path::new(url)) {
        return Ok((format, ext, url.to_string()));
    }
    let runtime = ctx.runtime_env();
    let dir = ember_exec::storage::Dir::parse(url, runtime.object_store_registry.as_ref())?;
    let names = dir.list().await.with_context(|| format!("listing {url}"))?;
    let (format, ext) = files_format(url, names.iter().map(std::path::PathBuf::from))?;
    Ok((format, ext, format!("{}/", url.trim_end_matches('/'))))
}

/// The format of the data files in `dir` (hidden files and markers such as
/// `_SUCCESS` are ignored, as DataFusion ignores them).
fn directory_format(dir: &Path) -> Result<(FileFormat, &'static str)> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut files = vec![];
    for entry in entries {
        let path = entry?.path();
        if !path.is_dir() {
            files.push(path);
        }
    }
    files_format(&dir.display().to_string(), files.into_iter())
}

/// The one format of `files` (the files of directory `dir`).
fn files_format(
    dir: &str,
    files: impl Iterator<Item = std::path::PathBuf>,
) -> Result<(FileFormat, &'static str)> {
    let mut found = None;
    for path in files {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.') || n.starts_with('_'));
        if hidden {
            continue;
        }
        match (FileFormat::from_path(&path), found) {
            (Some(f), None) => found = Some(f),
            (Some(f), Some(seen)) if f != seen => bail!(
                "{dir} mixes {} and {} files; register one format per table",
                seen.1,
                f.1
            ),
            _ => {}
        }
    }
    found.with_context(|| format!("{dir} has no .parquet, .csv, .json or .ndjson files"))
}
