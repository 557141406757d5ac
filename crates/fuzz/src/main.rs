//! `ember-fuzz <target|all> [--seconds N] [--corpus DIR] [--seed S]`: see the crate's
//! README.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ember_fuzz::supervisor::{self, RunOptions};
use ember_fuzz::{Budget, Options, engine, targets};

/// Fails any single allocation over 1 GiB, which aborts the process with Rust's
/// "memory allocation of N bytes failed": no decoder needs that much for a 64 KiB
/// input, and a claimed length that big is the bug to find. Without the bound such
/// an allocation may succeed lazily and end in the OOM killer instead.
struct Bounded;

const LARGEST_ALLOCATION: usize = 1 << 30;

// SAFETY: forwards to the system allocator; refusing (null) is allowed by the trait.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LARGEST_ALLOCATION {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LARGEST_ALLOCATION {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LARGEST_ALLOCATION {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

#[derive(Parser)]
#[command(about = "Fuzzes ember's decoders of outside bytes; exits non-zero on a finding")]
struct Args {
    /// A target (kafka_request, record_batch, task_definition, plan, task_status,
    /// state_file, sql) or `all`.
    target: String,
    /// Time budget per target.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Folder of seed inputs, one sub-folder per target.
    #[arg(long, default_value_os_t = ember_fuzz::default_corpus())]
    corpus: PathBuf,
    /// Folder for findings, one sub-folder per target.
    #[arg(long, default_value_os_t = ember_fuzz::default_findings())]
    findings: PathBuf,
    /// PRNG seed: the same seed repeats the same inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A single input running longer than this is a finding.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Targets fuzzed at once, each in its own process (default: the cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Write the seeds of the target(s) into the corpus folder, from the real
    /// encoders, and exit.
    #[arg(long)]
    write_seeds: bool,
    /// Run one input file through the target with the default panic output, and exit.
    #[arg(long)]
    reproduce: Option<PathBuf>,
    /// Internal: fuzz in this process (the supervisor's child).
    #[arg(long, hide = true)]
    child: bool,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let names = if args.target == "all" {
        targets::names()
    } else {
        match targets::names().into_iter().find(|n| *n == args.target) {
            Some(name) => vec![name],
            None => bail!(
                "unknown target {:?}; the targets: all, {}",
                args.target,
                targets::names().join(", ")
            ),
        }
    };
    let target = |name| targets::find(name).expect("a listed target");
    if args.write_seeds {
        for name in names {
            let n = targets::write_seeds(&target(name), &args.corpus)?;
            println!("{name}: {n} seeds in {}", args.corpus.join(name).display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(file) = &args.reproduce {
        let [name] = names[..] else {
            bail!("--reproduce needs one target")
        };
        let input = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        println!("{}", engine::reproduce(&target(name), &input)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.child {
        let [name] = names[..] else {
            bail!("--child needs one target")
        };
        let stats = engine::fuzz(
            &target(name),
            &Options {
                seed: args.seed,
                budget: Budget::Time(Duration::from_secs(args.seconds)),
                corpus: args.corpus,
                findings: Some(args.findings),
                supervised: true,
                timeout: Duration::from_secs(args.timeout),
                progress: true,
            },
        )?;
        println!("{}", supervisor::child_stats_line(&stats));
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let stats = supervisor::run(&RunOptions {
        targets: names,
        seconds: args.seconds,
        seed: args.seed,
        corpus: args.corpus,
        findings: args.findings,
        jobs,
        timeout: Duration::from_secs(args.timeout),
    })?;
    Ok(if stats.iter().any(|s| !s.findings.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
