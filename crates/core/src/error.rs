//! ember's error type. Every error says what went wrong and where; errors that reach the
//! scheduler also say whether running the task again may help.

use datafusion::error::DataFusionError;

/// Result with [`EmberError`] as the default error.
pub type Result<T, E = EmberError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EmberError {
    /// Planning or execution error from DataFusion (SQL, schema, operators).
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),

    /// Arrow error (IPC, casts, kernels).
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// Local file system error, with the path it concerns.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A bad configuration key or value.
    #[error("configuration error: {0}")]
    Config(String),

    /// A plan or message that could not be decoded.
    #[error("could not decode {what}: {message}")]
    Decode { what: &'static str, message: String },

    /// A shuffle partition could not be read from the map output that holds it.
    #[error(
        "fetch failed: map output of stage {map_stage} partition {map_partition} on executor {executor}: {message}"
    )]
    FetchFailed {
        executor: String,
        map_stage: usize,
        map_partition: usize,
        message: String,
    },

    /// The task was killed (its job was cancelled or failed).
    #[error("task was killed")]
    Killed,

    /// The job was cancelled by its owner.
    #[error("job {job} was cancelled")]
    Cancelled { job: u64 },

    /// A job failed; `cause` is the root cause as reported by the failing task.
    #[error("job {job} failed: {cause}")]
    JobFailed { job: u64, cause: String },

    /// An injected failure (`ember.test.fail_tasks`), for tests of the retry path.
    #[error("injected failure in stage {stage} partition {partition} attempt {attempt}")]
    Injected {
        stage: usize,
        partition: usize,
        attempt: usize,
    },

    /// An error the driver reported to a client session (`ember://`).
    #[error("{message} (from the driver at {address})")]
    Remote { address: String, message: String },

    /// Something the engine does not support (yet), with what it was.
    #[error("not supported: {0}")]
    NotSupported(String),

    /// An internal invariant broke: a bug in ember.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EmberError {
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        EmberError::Io {
            path: path.to_string(),
            source,
        }
    }

    /// Whether running the failed task again may succeed. Planning errors, bad SQL
    /// and bad data are deterministic; I/O, fetch failures and injected faults are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            EmberError::Io { .. }
            | EmberError::FetchFailed { .. }
            | EmberError::Injected { .. } => true,
            EmberError::DataFusion(DataFusionError::IoError(_))
            | EmberError::DataFusion(DataFusionError::ObjectStore(_))
            | EmberError::DataFusion(DataFusionError::ResourcesExhausted(_)) => true,
            EmberError::DataFusion(DataFusionError::External(e)) => e
                .downcast_ref::<EmberError>()
                .map(EmberError::is_retryable)
                .unwrap_or(false),
            EmberError::DataFusion(DataFusionError::Context(_, inner)) => {
                matches!(**inner, DataFusionError::IoError(_))
            }
            _ => false,
        }
    }

    /// The message as one line, without DataFusion's nesting noise, for shells and logs.
    pub fn one_line(&self) -> String {
        self.to_string().replace('\n', " ")
    }
}

impl From<EmberError> for DataFusionError {
    fn from(e: EmberError) -> Self {
        match e {
            EmberError::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}
