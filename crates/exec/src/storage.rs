//! Where a streaming query keeps its checkpoint and state: a local directory, or a
//! directory of an object store, named by URL.
//!
//! | Location | Store |
//! |---|---|
//! | `/path`, `./path`, `file:///path` | the local file system (a path every executor sees, in a cluster) |
//! | `http://host:port/path`, `https://..` | a WebDAV server (`rclone serve webdav`, Apache's mod_dav) |
//! | `s3://bucket/path` | Amazon S3 or a server that speaks its API; configured by the session's `ember.s3.*` settings (`endpoint`, `region`, `access_key_id`, `secret_access_key`, `allow_http`), which every job carries to the executors, and where those are empty by the `AWS_*` environment variables (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`) |
//!
//! Every runtime ember builds resolves these through [`EmberStores`], DataFusion's
//! object store registry with ad-hoc discovery, so a table at such a URL reads as a
//! checkpoint does, on the driver and the executors alike.
//!
//! A file is written whole or not at all: locally through a temporary file, synced and
//! renamed; in an object store by one PUT.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::Mutex;

use crate::config::S3Settings;
use crate::{EmberError, Result};

/// A directory, local or in an object store.
#[derive(Clone)]
pub enum Dir {
    Local(PathBuf),
    Store {
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        /// The URL, for messages.
        url: String,
    },
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Dir::Local(p) => write!(f, "{}", p.display()),
            Dir::Store { url, .. } => f.write_str(url),
        }
    }
}

impl fmt::Debug for Dir {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Dir({self})")
    }
}

/// The client of `url`'s server (scheme, host and port, or bucket): the one in the
/// runtime's registry (an [`EmberStores`] makes it with its settings), or a new one
/// put there for the directories after it.
fn store_for(url: &url::Url, stores: &dyn ObjectStoreRegistry) -> Result<Arc<dyn ObjectStore>> {
    if let Ok(store) = stores.get_store(url) {
        return Ok(store);
    }
    let store = build_store(url, &S3Settings::default())?;
    stores.register_store(url, store.clone());
    Ok(store)
}

/// How long connecting to an object store's server may take.
const CONNECT_TIMEOUT: &str = "5s";

/// Retries of a failed object store request: a few, within 15 s, so that an
/// unreachable server fails the query soon (the default retries for 3 minutes).
fn bounded_retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(15),
        ..Default::default()
    }
}

/// A new client for `url`'s server: WebDAV over `http(s)://`, or S3 (`s3://bucket`,
/// configured by `s3`, and by the `AWS_*` environment variables where it is empty).
fn build_store(url: &url::Url, s3: &S3Settings) -> Result<Arc<dyn ObjectStore>> {
    let bad = |e: object_store::Error| EmberError::Config(format!("the location {url}: {e}"));
    Ok(match url.scheme() {
        "http" | "https" => {
            let origin = url.origin().ascii_serialization();
            Arc::new(
                object_store::http::HttpBuilder::new()
                    .with_url(origin)
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_allow_http(url.scheme() == "http")
                            .with_config(
                                object_store::ClientConfigKey::ConnectTimeout,
                                CONNECT_TIMEOUT,
                            ),
                    )
                    .with_retry(bounded_retries())
                    .build()
                    .map_err(bad)?,
            )
        }
        "s3" | "s3a" => Arc::new(
            s3_builder(s3)
                .with_url(url.as_str())
                .with_retry(bounded_retries())
                .with_config(
                    object_store::aws::AmazonS3ConfigKey::Client(
                        object_store::ClientConfigKey::ConnectTimeout,
                    ),
                    CONNECT_TIMEOUT,
                )
                .build()
                .map_err(bad)?,
        ),
        other => {
            return Err(EmberError::Config(format!(
                "the location {url}: the scheme '{other}' is not supported (a path, file://, http(s):// for WebDAV, or s3://)"
            )));
        }
    })
}

/// The S3 client builder of the environment (`AWS_*`), with what `s3` sets over it.
fn s3_builder(s3: &S3Settings) -> object_store::aws::AmazonS3Builder {
    let mut builder = object_store::aws::AmazonS3Builder::from_env();
    if !s3.endpoint.is_empty() {
        builder = builder.with_endpoint(&s3.endpoint);
    }
    if !s3.region.is_empty() {
        builder = builder.with_region(&s3.region);
    }
    if !s3.access_key_id.is_empty() {
        builder = builder.with_access_key_id(&s3.access_key_id);
    }
    if !s3.secret_access_key.is_empty() {
        builder = builder.with_secret_access_key(&s3.secret_access_key);
    }
    if !s3.allow_http.is_empty() {
        builder = builder.with_allow_http(s3.allow_http == "true");
    }
    builder
}

/// The object stores of a session or an executor: DataFusion's registry, which also
/// makes the client of an `http(s)://` or `s3://` location the first time one is
/// asked for. Every runtime ember builds has one, so tables, checkpoints and state
/// find their store the same way in every process.
#[derive(Debug, Default)]
pub struct EmberStores {
    known: DefaultObjectStoreRegistry,
    /// The `ember.s3.*` settings its S3 clients are made with, and the locations of
    /// the clients it made (dropped when the settings change).
    s3: Mutex<(S3Settings, Vec<url::Url>)>,
}

impl EmberStores {
    /// A DataFusion runtime whose object stores come from a new [`EmberStores`].
    pub fn runtime() -> Result<Arc<RuntimeEnv>> {
        Self::runtime_of(Arc::new(EmberStores::default()))
    }

    /// A DataFusion runtime whose object stores come from `stores`.
    ///
    /// It keeps no listings of directories: DataFusion's cache of them never expires
    /// by default, so a read of a directory an earlier write or another process has
    /// added to since would miss the new files (Spark lists on every read too).
    pub fn runtime_of(stores: Arc<EmberStores>) -> Result<Arc<RuntimeEnv>> {
        Ok(RuntimeEnvBuilder::new()
            .with_object_store_registry(stores)
            .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
            .build_arc()?)
    }

    /// Makes later S3 clients with `settings` (a session's or a task's `ember.s3.*`);
    /// when they differ from the current ones, the clients made with those go.
    pub fn configure_s3(&self, settings: &S3Settings) {
        let mut s3 = self.s3.lock();
        if s3.0 == *settings {
            return;
        }
        s3.0 = settings.clone();
        for url in s3.1.drain(..) {
            let _ = self.known.deregister_store(&url);
        }
    }
}

impl ObjectStoreRegistry for EmberStores {
    fn register_store(
        &self,
        url: &url::Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &url::Url) -> DFResult<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &url::Url) -> DFResult<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.known.get_store(url) {
            return Ok(store);
        }
        let mut s3 = self.s3.lock();
        let store =
            build_store(url, &s3.0).map_err(|e| DataFusionError::Configuration(e.to_string()))?;
        self.known.register_store(url, store.clone());
        if matches!(url.scheme(), "s3" | "s3a") {
            s3.1.push(url.clone());
        }
        Ok(store)
    }
}

impl Dir {
    /// A path, or a URL of a supported store, whose client comes from (or goes
    /// into) `stores`: DataFusion's registry in the runtime of the session or
    /// executor, the one place tables, checkpoints and state get their stores from.
    pub fn parse(location: &str, stores: &dyn ObjectStoreRegistry) -> Result<Dir> {
        let Some((scheme, _)) = location.split_once("://") else {
            return Ok(Dir::Local(PathBuf::from(location)));
        };
        let url = url::Url::parse(location)
            .map_err(|e| EmberError::Config(format!("the location {location}: {e}")))?;
        if scheme == "file" {
            let path = url.to_file_path().map_err(|_| {
                EmberError::Config(format!("the location {location}: not a local path"))
            })?;
            return Ok(Dir::Local(path));
        }
        let path = ObjectPath::from_url_path(url.path())
            .map_err(|e| EmberError::Config(format!("the location {location}: {e}")))?;
        Ok(Dir::Store {
            store: store_for(&url, stores)?,
            path,
            url: location.trim_end_matches('/').to_string(),
        })
    }

    /// The local directory, made absolute (tasks may run in other directories).
    pub fn absolute(self) -> Result<Dir> {
        match self {
            Dir::Local(p) => Ok(Dir::Local(
                std::path::absolute(&p).map_err(|e| EmberError::io(p.display(), e))?,
            )),
            other => Ok(other),
        }
    }

    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Dir::Local(p) => Some(p),
            Dir::Store { .. } => None,
        }
    }

    pub fn join(&self, name: &str) -> Dir {
        match self {
            Dir::Local(p) => Dir::Local(p.join(name)),
            Dir::Store { store, path, url } => Dir::Store {
                store: store.clone(),
                path: path.clone().join(name),
                url: format!("{url}/{name}"),
            },
        }
    }

    fn error(&self, name: &str, e: impl std::error::Error + Send + Sync + 'static) -> EmberError {
        EmberError::io(format!("{self}/{name}"), std::io::Error::other(e))
    }

    /// Creates the directory (object stores have none to create).
    pub async fn create(&self) -> Result<()> {
        if let Dir::Local(p) = self {
            std::fs::create_dir_all(p).map_err(|e| EmberError::io(p.display(), e))?;
        }
        Ok(())
    }

    /// A file's bytes, or none if it does not exist.
    pub async fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Dir::Local(p) => match std::fs::read(p.join(name)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(EmberError::io(p.join(name).display(), e)),
            },
            Dir::Store { store, path, .. } => match store.get(&path.clone().join(name)).await {
                Ok(got) => Ok(Some(
                    got.bytes().await.map_err(|e| self.error(name, e))?.to_vec(),
                )),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.error(name, e)),
            },
        }
    }

    /// At most the first `max` bytes of a file, or none if it does not exist.
    pub async fn read_head(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        match self {
            Dir::Local(p) => {
                use std::io::Read;
                let file = match std::fs::File::open(p.join(name)) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(EmberError::io(p.join(name).display(), e)),
                };
                let mut head = vec![];
                file.take(max)
                    .read_to_end(&mut head)
                    .map_err(|e| EmberError::io(p.join(name).display(), e))?;
                Ok(Some(head))
            }
            Dir::Store { store, path, .. } => {
                // A range past the end brings what there is.
                let options = object_store::GetOptions {
                    range: Some(object_store::GetRange::Bounded(0..max)),
                    ..Default::default()
                };
                match store.get_opts(&path.clone().join(name), options).await {
                    Ok(got) => Ok(Some(
                        got.bytes().await.map_err(|e| self.error(name, e))?.to_vec(),
                    )),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.error(name, e)),
                }
            }
        }
    }

    /// Writes a file whole, replacing it.
    pub async fn write(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            Dir::Local(p) => write_atomically(&p.join(name), &bytes),
            Dir::Store { store, path, .. } => store
                .put(&path.clone().join(name), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| self.error(name, e)),
        }
    }

    /// Deletes a file, named relative to it (`a=1/x.parquet` names one in a
    /// subdirectory); one that does not exist is no error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        match self {
            Dir::Local(p) => match std::fs::remove_file(p.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(EmberError::io(p.join(name).display(), e))
                }
                _ => Ok(()),
            },
            Dir::Store { store, path, .. } => {
                let object = name.split('/').fold(path.clone(), |p, part| p.join(part));
                match store.delete(&object).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.error(name, e)),
                }
            }
        }
    }

    /// Deletes everything under it (and, locally, the directory or file itself); a
    /// location that does not exist is no error.
    pub async fn remove_all(&self) -> Result<()> {
        match self {
            Dir::Local(p) => {
                let removed = match std::fs::metadata(p) {
                    Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(p),
                    Ok(_) => std::fs::remove_file(p),
                    Err(e) => Err(e),
                };
                match removed {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(EmberError::io(p.display(), e))
                    }
                    _ => Ok(()),
                }
            }
            Dir::Store { store, path, .. } => {
                use futures::TryStreamExt;
                let objects: Vec<object_store::ObjectMeta> =
                    match store.list(Some(path)).try_collect().await {
                        Ok(objects) => objects,
                        Err(object_store::Error::NotFound { .. }) => return Ok(()),
                        Err(e) => return Err(self.error("", e)),
                    };
                for object in objects {
                    match store.delete(&object.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(self.error(object.location.as_ref(), e)),
                    }
                }
                Ok(())
            }
        }
    }

    /// The files directly in it, with when each was last written (none if it does
    /// not exist).
    pub async fn list_files(&self) -> Result<Vec<FileEntry>> {
        match self {
            Dir::Local(p) => {
                let io = |e| EmberError::io(p.display(), e);
                let entries = match std::fs::read_dir(p) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
                    Err(e) => return Err(io(e)),
                };
                let mut files = vec![];
                for entry in entries {
                    let entry = entry.map_err(io)?;
                    let meta = entry.metadata().map_err(io)?;
                    if let (true, Some(name)) = (meta.is_file(), entry.file_name().to_str()) {
                        files.push(FileEntry {
                            name: name.to_string(),
                            modified: meta.modified().map_err(io)?,
                            size: meta.len(),
                        });
                    }
                }
                Ok(files)
            }
            Dir::Store { store, path, .. } => {
                let listed = match store.list_with_delimiter(Some(path)).await {
                    Ok(l) => l,
                    Err(object_store::Error::NotFound { .. }) => return Ok(vec![]),
                    Err(e) => return Err(self.error("", e)),
                };
                Ok(listed
                    .objects
                    .into_iter()
                    .filter_map(|o| {
                        Some(FileEntry {
                            name: o.location.filename()?.to_string(),
                            modified: o.last_modified.into(),
                            size: o.size,
                        })
                    })
                    .collect())
            }
        }
    }

    /// Every file under it, at any depth, as paths relative to it (`a=1/x.parquet`).
    pub async fn files_under(&self) -> Result<Vec<String>> {
        match self {
            Dir::Local(root) => {
                let mut files = vec![];
                let mut dirs = vec![root.clone()];
                while let Some(dir) = dirs.pop() {
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(EmberError::io(dir.display(), e)),
                    };
                    for entry in entries {
                        let entry = entry.map_err(|e| EmberError::io(dir.display(), e))?;
                        let path = entry.path();
                        if path.is_dir() {
                            dirs.push(path);
                        } else if let Ok(relative) = path.strip_prefix(root) {
                            files.push(relative.to_string_lossy().into_owned());
                        }
                    }
                }
                Ok(files)
            }
            Dir::Store { store, path, .. } => {
                use futures::TryStreamExt;
                let objects: Vec<object_store::ObjectMeta> =
                    match store.list(Some(path)).try_collect().await {
                        Ok(objects) => objects,
                        Err(object_store::Error::NotFound { .. }) => return Ok(vec![]),
                        Err(e) => return Err(self.error("", e)),
                    };
                Ok(objects
                    .iter()
                    .filter_map(|o| {
                        let parts: Vec<_> = o.location.prefix_match(path)?.collect();
                        Some(
                            parts
                                .iter()
                                .map(|p| p.as_ref())
                                .collect::<Vec<_>>()
                                .join("/"),
                        )
                    })
                    .collect())
            }
        }
    }

    /// The names of the files and directories in it (none if it does not exist).
    pub async fn list(&self) -> Result<Vec<String>> {
        match self {
            Dir::Local(p) => {
                let entries = match std::fs::read_dir(p) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
                    Err(e) => return Err(EmberError::io(p.display(), e)),
                };
                let mut names = vec![];
                for entry in entries {
                    let entry = entry.map_err(|e| EmberError::io(p.display(), e))?;
                    if let Some(name) = entry.file_name().to_str() {
                        names.push(name.to_string());
                    }
                }
                Ok(names)
            }
            Dir::Store { store, path, .. } => {
                let listed = match store.list_with_delimiter(Some(path)).await {
                    Ok(l) => l,
                    Err(object_store::Error::NotFound { .. }) => return Ok(vec![]),
                    Err(e) => return Err(self.error("", e)),
                };
                let last = |p: &ObjectPath| p.filename().map(str::to_string);
                Ok(listed
                    .objects
                    .iter()
                    .filter_map(|o| last(&o.location))
                    .chain(listed.common_prefixes.iter().filter_map(last))
                    .collect())
            }
        }
    }
}

/// A file of a [`Dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    /// When it was last written.
    pub modified: std::time::SystemTime,
    pub size: u64,
}

/// Writes through a temporary file and a rename: a crash leaves the old file or the
/// new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |p: &Path, e| EmberError::io(p.display(), e);
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io(&tmp, e))?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    // The rename is durable once the directory is: a crash after an acknowledged
    // write must not bring the old file back.
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(parent, e))?;
    }
    Ok(())
}
