//! ember-fuzz: a mutation fuzzer for every decoder of ember that reads bytes from
//! outside the process, on stable Rust and without new dependencies.
//!
//! - [`targets`]: the decoders (Kafka request frames, record batches and segments,
//!   task definitions and stage plans, task status reports, checkpoint and state
//!   files, SQL text), each with seeds made by the real encoders.
//! - `mutate` / `rng`: byte-level and dictionary mutations from a seeded PRNG, so a
//!   run is repeatable from its seed.
//! - [`engine`]: the loop of one target in this process; a panic (in any thread) or
//!   a run past the timeout is a finding, written to `findings/<target>/<hash>`.
//! - [`supervisor`]: runs each target in a child process of this binary, so that an
//!   abort (a huge allocation, a stack overflow) is reported with the input that
//!   caused it (`findings/<target>/last-input`) instead of ending the whole run.

pub mod engine;
mod mutate;
mod rng;
pub mod supervisor;
pub mod targets;

use std::path::{Path, PathBuf};

pub use engine::{Budget, Finding, Options, Stats};

/// The exit code of a child whose watchdog saw a run past the timeout.
pub const EXIT_TIMEOUT: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting up a target: {0}")]
    Setup(String),
    #[error("{0}")]
    Usage(String),
    #[error("the child process of target {target}: {message}")]
    Child { target: String, message: String },
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The seeds committed with the crate.
pub fn default_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Where findings go unless told otherwise (ignored by git).
pub fn default_findings() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("findings")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Targets with open findings: they run their seeds only, until those are fixed
    /// (see README).
    const OPEN_FINDINGS: &[&str] = &[];

    /// Every target survives its seeds and a few hundred mutations of them (the
    /// seeds are built in when the committed corpus is missing).
    #[test]
    fn every_target_runs_its_seeds_and_mutations_without_a_finding() {
        for target in targets::all() {
            let seeds = engine::load_corpus(&target, &default_corpus())
                .unwrap()
                .len() as u64;
            let iterations = match target.name {
                name if OPEN_FINDINGS.contains(&name) => seeds,
                // Planning in a debug build takes milliseconds per input.
                "sql" => 150,
                _ => 600,
            };
            let stats = engine::fuzz(
                &target,
                &Options {
                    seed: 1,
                    budget: Budget::Iterations(iterations),
                    corpus: default_corpus(),
                    findings: None,
                    supervised: false,
                    timeout: std::time::Duration::from_secs(60),
                    progress: false,
                },
            )
            .unwrap();
            assert_eq!(stats.executions, iterations, "{}", target.name);
            assert!(
                stats.distinct_outcomes > 1,
                "{}: one outcome only",
                target.name
            );
            assert!(
                stats.findings.is_empty(),
                "{}: {}",
                target.name,
                stats.findings[0].message
            );
        }
    }
}
