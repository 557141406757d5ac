//! The fuzz loop of one target, in this process.
//!
//! ```text
//!  corpus (seeds + inputs that gave a new outcome)
//!     │ pick one, mutate (mutate.rs), bounded to the target's max_len
//!     ▼
//!  last-input file ◀── the input, written in place before each run (pwrite), so
//!     │                 the supervisor can name it if the process dies
//!     ▼
//!  catch_unwind(target.run(input)) ── Ok(label) / Err(message): an outcome
//!     │                           └── a panic (in any thread): a finding
//!     ▼
//!  watchdog thread: a run longer than the timeout is a finding; the process exits
//! ```

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use crate::mutate::Mutator;
use crate::rng::{Rng, hash};
use crate::targets::Target;
use crate::{Error, Result};

/// How long a target runs.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Time(Duration),
    Iterations(u64),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub budget: Budget,
    /// Where the committed seeds are (`<corpus>/<target>/`); the target's built-in
    /// seeds when that folder is empty or missing.
    pub corpus: PathBuf,
    /// Where findings go (`<findings>/<target>/`); none: only reported.
    pub findings: Option<PathBuf>,
    /// Keep `<findings>/<target>/last-input` up to date and watch for hangs.
    pub supervised: bool,
    pub timeout: Duration,
    /// Print the execution count to stdout now and then (for the supervisor).
    pub progress: bool,
}

/// A panic or a hang, and the input that caused it.
#[derive(Debug, Clone)]
pub struct Finding {
    pub kind: &'static str,
    pub message: String,
    pub input: Vec<u8>,
    /// Where the input was written.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub target: String,
    pub executions: u64,
    pub elapsed: Duration,
    pub distinct_outcomes: usize,
    pub corpus: usize,
    pub findings: Vec<Finding>,
}

impl Stats {
    pub fn execs_per_second(&self) -> f64 {
        self.executions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Inputs kept beyond the seeds, at most.
const CORPUS_CAP: usize = 4096;
/// What ember's errors say when ember caught a dependency's panic itself
/// (`ember_exec::codec::decode_plan`).
const CAUGHT_BY_EMBER: &[&str] = &["the plan decoder failed: "];

/// Distinct findings written per target, at most.
const FINDINGS_CAP: usize = 20;

/// Panics seen while armed, from any thread (planning runs on its own threads, and
/// a panic there may come back as an error value).
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static ARMED: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !ARMED.load(Ordering::SeqCst) {
                return previous(info);
            }
            let thread = std::thread::current();
            let message = format!(
                "thread '{}' panicked at {}:\n{}\n{}",
                thread.name().unwrap_or("<unnamed>"),
                info.location().map_or("?".into(), |l| l.to_string()),
                panic_message(info.payload()),
                std::backtrace::Backtrace::force_capture()
            );
            PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(message);
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>")
}

/// An outcome with the numbers taken out and cut short, so that "truncated to 12
/// bytes" and "truncated to 13 bytes" count once.
pub fn normalize(outcome: &str) -> String {
    let mut out = String::new();
    let mut digits = false;
    for c in outcome.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push('#');
            }
            digits = true;
        } else {
            digits = false;
            out.push(c);
        }
        if out.len() >= 80 {
            break;
        }
    }
    out
}

/// The committed seeds of `target` in `dir`, or its built-in ones.
pub fn load_corpus(target: &Target, dir: &Path) -> Result<Vec<Vec<u8>>> {
    let dir = dir.join(target.name);
    let mut inputs = vec![];
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            inputs.push(bytes);
        }
    }
    if inputs.is_empty() {
        inputs = (target.seeds)()?;
    }
    inputs.retain(|i| i.len() <= target.max_len);
    if inputs.is_empty() {
        inputs.push(vec![]);
    }
    Ok(inputs)
}

/// The input being run, written in place: a process that dies leaves it behind.
struct LastInput {
    file: File,
    len: usize,
}

impl LastInput {
    fn open(path: &Path) -> Result<LastInput> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(LastInput { file, len: 0 })
    }

    fn record(&mut self, input: &[u8]) {
        use std::os::unix::fs::FileExt;
        // Best effort: failing to record must not stop the fuzzing.
        let _ = self.file.write_all_at(input, 0);
        if input.len() < self.len {
            let _ = self.file.set_len(input.len() as u64);
        }
        self.len = input.len();
    }
}

/// Watches the run in progress from another thread: past the timeout, the input is
/// a finding and the process exits (a hung decoder cannot be stopped otherwise).
fn start_watchdog(target: &'static str, started: Arc<AtomicU64>, timeout: Duration, last: PathBuf) {
    std::thread::Builder::new()
        .name("fuzz-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let at = started.load(Ordering::SeqCst);
                if at == u64::MAX {
                    continue;
                }
                let now = crate::now_ms();
                if now.saturating_sub(at) > timeout.as_millis() as u64 {
                    eprintln!(
                        "{target}: one input has run for more than {timeout:?}; it is in {}",
                        last.display()
                    );
                    std::process::exit(crate::EXIT_TIMEOUT);
                }
            }
        })
        .expect("spawning the watchdog thread");
}

/// Writes a finding's input and report under `dir`; returns the input's path.
pub fn write_finding(dir: &Path, input: &[u8], report: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(format!("{:016x}", hash(input)));
    std::fs::write(&path, input).map_err(|e| Error::io(&path, e))?;
    let txt = path.with_extension("txt");
    std::fs::write(&txt, report).map_err(|e| Error::io(&txt, e))?;
    Ok(path)
}

/// Fuzzes `target` in this process.
pub fn fuzz(target: &Target, opts: &Options) -> Result<Stats> {
    install_hook();
    let mut runner = (target.runner)()?;
    let seeds = load_corpus(target, &opts.corpus)?;
    let findings_dir = opts.findings.as_ref().map(|d| d.join(target.name));
    let started = Arc::new(AtomicU64::new(u64::MAX));
    let mut last = None;
    if opts.supervised {
        let dir = findings_dir
            .as_ref()
            .ok_or_else(|| Error::Usage("a supervised run needs a findings folder".into()))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("last-input");
        last = Some(LastInput::open(&path)?);
        start_watchdog(target.name, started.clone(), opts.timeout, path);
    }
    let mut mutator = Mutator {
        rng: Rng::new(opts.seed ^ hash(target.name.as_bytes())),
        max_len: target.max_len,
        dictionary: target.dictionary,
    };
    let mut corpus = seeds.clone();
    let mut outcomes: HashMap<String, u64> = HashMap::new();
    let mut signatures = HashSet::new();
    let mut stats = Stats {
        target: target.name.to_string(),
        ..Stats::default()
    };
    let begin = Instant::now();
    let mut last_progress = begin;
    let mut i = 0u64;
    loop {
        match opts.budget {
            Budget::Time(t) if begin.elapsed() >= t && i >= seeds.len() as u64 => break,
            Budget::Iterations(n) if i >= n => break,
            _ => {}
        }
        // Every seed as it is first, then mutations.
        let input = match seeds.get(i as usize) {
            Some(seed) => seed.clone(),
            None => {
                let mut input = mutator.rng.pick(&corpus).clone();
                let other = mutator.rng.pick(&corpus).clone();
                mutator.mutate(&mut input, &other);
                input
            }
        };
        i += 1;
        if let Some(last) = &mut last {
            last.record(&input);
        }
        PANICS.lock().unwrap_or_else(|e| e.into_inner()).clear();
        ARMED.store(true, Ordering::SeqCst);
        started.store(crate::now_ms(), Ordering::SeqCst);
        let result = catch_unwind(AssertUnwindSafe(|| runner.run(&input)));
        started.store(u64::MAX, Ordering::SeqCst);
        ARMED.store(false, Ordering::SeqCst);
        stats.executions += 1;
        let panics = std::mem::take(&mut *PANICS.lock().unwrap_or_else(|e| e.into_inner()));
        // A panic ember itself caught and turned into an error that says so (a
        // dependency's decoder behind `catch_unwind`) is an outcome, not a finding.
        let caught_by_ember =
            matches!(&result, Ok(Err(m)) if CAUGHT_BY_EMBER.iter().any(|c| m.contains(c)));
        let outcome = match result {
            Ok(Ok(label)) => format!("ok: {label}"),
            Ok(Err(message)) => format!("error: {message}"),
            Err(_) => "panic".into(),
        };
        if let Some(report) = panics.first().filter(|_| !caught_by_ember) {
            // One input per place of panic: the rest are likely the same bug.
            let signature = report.lines().next().unwrap_or_default().to_string();
            if signatures.insert(signature) && stats.findings.len() < FINDINGS_CAP {
                let path = match &findings_dir {
                    Some(dir) => Some(write_finding(dir, &input, report)?),
                    None => None,
                };
                stats.findings.push(Finding {
                    kind: "panic",
                    message: report.clone(),
                    input: input.clone(),
                    path,
                });
            }
            // Recreate the target's state: a panic may have left it half-updated.
            runner = (target.runner)()?;
        }
        let key = normalize(&outcome);
        let count = outcomes.entry(key).or_insert(0);
        *count += 1;
        if *count == 1 && corpus.len() < seeds.len() + CORPUS_CAP {
            corpus.push(input);
        }
        if opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            println!("PROGRESS {}", stats.executions);
        }
    }
    stats.elapsed = begin.elapsed();
    stats.distinct_outcomes = outcomes.len();
    stats.corpus = corpus.len();
    Ok(stats)
}

/// Runs one input with the default panic hook, for reproducing a finding.
pub fn reproduce(target: &Target, input: &[u8]) -> Result<String> {
    let mut runner = (target.runner)()?;
    Ok(match runner.run(input) {
        Ok(label) => format!("ok: {label}"),
        Err(message) => format!("error: {message}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_differing_only_in_numbers_are_one() {
        assert_eq!(
            normalize("batch of 1234 bytes is truncated to 56"),
            normalize("batch of 99 bytes is truncated to 7")
        );
        assert!(normalize(&"x".repeat(500)).len() <= 80);
    }
}
