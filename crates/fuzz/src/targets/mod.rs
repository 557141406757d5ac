//! The decoders under test: each takes bytes that come from outside the process
//! (the network, a checkpoint or log directory, a user's SQL) and must answer every
//! input with a value or an error, never a panic, an abort or a hang.

mod kafka;
mod plan;
mod record_batch;
mod sql;
mod state_file;
mod task_status;

use crate::Result;
use crate::mutate::Dictionary;

/// One decoder, as the fuzzer sees it.
pub trait Runner {
    /// Decodes one input: `Ok` with a short description of what it was, or the
    /// decoder's error message. Both are fine; only panics and hangs are findings.
    fn run(&mut self, input: &[u8]) -> std::result::Result<String, String>;
}

pub struct Target {
    pub name: &'static str,
    /// Inputs are cut to this size (the decoders' callers bound their inputs too).
    pub max_len: usize,
    pub dictionary: Dictionary,
    /// Sets up what the decoder needs (a session, a runtime, a scratch folder).
    pub runner: fn() -> Result<Box<dyn Runner>>,
    /// Valid inputs, made by the real encoders (`--write-seeds` commits them).
    pub seeds: fn() -> Result<Vec<Vec<u8>>>,
}

const KIB: usize = 1 << 10;

pub fn all() -> Vec<Target> {
    vec![
        kafka::target(),
        record_batch::target(),
        plan::task_definition(),
        plan::plan(),
        task_status::target(),
        state_file::target(),
        sql::target(),
    ]
}

pub fn names() -> Vec<&'static str> {
    all().iter().map(|t| t.name).collect()
}

pub fn find(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}

/// The seeds of a target, as files in `<dir>/<target>/` (replacing what was there).
pub fn write_seeds(target: &Target, dir: &std::path::Path) -> Result<usize> {
    let dir = dir.join(target.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
    let seeds = (target.seeds)()?;
    for seed in &seeds {
        let path = dir.join(format!("{:016x}", crate::rng::hash(seed)));
        std::fs::write(&path, seed).map_err(|e| crate::Error::io(&path, e))?;
    }
    Ok(seeds.len())
}

/// A current-thread tokio runtime for the async decoders.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::Error::Setup(format!("starting a tokio runtime: {e}")))
}

fn setup(what: &str) -> impl Fn(String) -> crate::Error + '_ {
    move |e| crate::Error::Setup(format!("{what}: {e}"))
}
