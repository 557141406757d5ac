//! Runs targets in child processes of this binary and reports.
//!
//! ```text
//!  ember-fuzz all ──spawn──▶ ember-fuzz <target> --child   (up to --jobs at once)
//!                  ◀─stdout── PROGRESS <executions> ... STATS <json>
//!  exit 0 with STATS:       the child's own counts and findings (panics)
//!  exit 3 (watchdog):       a run past the timeout: last-input is the finding
//!  killed by a signal, or   an abort (huge allocation, stack overflow):
//!  no STATS:                last-input is the finding, stderr says why
//! ```

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::engine::{self, Finding, Stats};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub targets: Vec<&'static str>,
    pub seconds: u64,
    pub seed: u64,
    pub corpus: PathBuf,
    pub findings: PathBuf,
    pub jobs: usize,
    pub timeout: Duration,
}

/// Fuzzes every target of `opts` in its own child process; prints a line per target
/// as it ends and a JSON summary line at the end.
pub fn run(opts: &RunOptions) -> Result<Vec<Stats>> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Usage(format!("cannot find this executable: {e}")))?;
    let queue = Mutex::new(opts.targets.iter().rev().copied().collect::<Vec<_>>());
    let done = Mutex::new(Vec::new());
    let failed = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let Some(target) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                        return;
                    };
                    match child(&exe, target, opts) {
                        Ok(stats) => {
                            println!("{}", line(&stats));
                            done.lock().unwrap_or_else(|e| e.into_inner()).push(stats);
                        }
                        Err(e) => {
                            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|s| opts.targets.iter().position(|t| *t == s.target));
    for stats in &done {
        for f in &stats.findings {
            let path = f
                .path
                .as_ref()
                .map_or("-".into(), |p| p.display().to_string());
            println!("FINDING {} {} {path}\n{}", stats.target, f.kind, f.message);
        }
    }
    println!("{}", summary(&done));
    Ok(done)
}

/// One target's line: executions, rate, outcomes, findings.
pub fn line(s: &Stats) -> String {
    format!(
        "{:16} {:>9} execs in {:>5.1} s ({:>7.0}/s), {:>5} distinct outcomes, corpus {:>5}, {} findings",
        s.target,
        s.executions,
        s.elapsed.as_secs_f64(),
        s.execs_per_second(),
        s.distinct_outcomes,
        s.corpus,
        s.findings.len()
    )
}

fn stats_json(s: &Stats) -> serde_json::Value {
    json!({
        "target": s.target,
        "executions": s.executions,
        "seconds": (s.elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "execs_per_second": s.execs_per_second().round(),
        "distinct_outcomes": s.distinct_outcomes,
        "corpus": s.corpus,
        "findings": s.findings.iter().map(|f| json!({
            "kind": f.kind,
            "path": f.path.as_ref().map(|p| p.display().to_string()),
            "message": f.message.lines().take(3).collect::<Vec<_>>().join("\n"),
        })).collect::<Vec<_>>(),
    })
}

/// The final line: everything in one JSON object.
pub fn summary(all: &[Stats]) -> String {
    json!({
        "executions": all.iter().map(|s| s.executions).sum::<u64>(),
        "findings": all.iter().map(|s| s.findings.len()).sum::<usize>(),
        "targets": all.iter().map(stats_json).collect::<Vec<_>>(),
    })
    .to_string()
}

/// What a child prints last.
pub fn child_stats_line(s: &Stats) -> String {
    format!("STATS {}", stats_json(s))
}

fn parse_stats(target: &str, json: &str) -> Option<Stats> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(Stats {
        target: target.to_string(),
        executions: v["executions"].as_u64()?,
        elapsed: Duration::from_secs_f64(v["seconds"].as_f64()?),
        distinct_outcomes: v["distinct_outcomes"].as_u64()? as usize,
        corpus: v["corpus"].as_u64()? as usize,
        findings: v["findings"]
            .as_array()?
            .iter()
            .map(|f| Finding {
                kind: "panic",
                message: f["message"].as_str().unwrap_or_default().to_string(),
                input: vec![],
                path: f["path"].as_str().map(PathBuf::from),
            })
            .collect(),
    })
}

fn child(exe: &Path, target: &'static str, opts: &RunOptions) -> Result<Stats> {
    let err = |message: String| Error::Child {
        target: target.to_string(),
        message,
    };
    let begin = Instant::now();
    let mut process = Command::new(exe)
        .arg(target)
        .arg("--child")
        .args(["--seconds", &opts.seconds.to_string()])
        .args(["--seed", &opts.seed.to_string()])
        .args(["--timeout", &opts.timeout.as_secs().to_string()])
        .arg("--corpus")
        .arg(&opts.corpus)
        .arg("--findings")
        .arg(&opts.findings)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot start it: {e}")))?;
    let stdout = process.stdout.take().expect("piped stdout");
    let mut stderr = process.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut executions = 0;
    let mut stats = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("PROGRESS ") {
            executions = n.trim().parse().unwrap_or(executions);
        } else if let Some(json) = line.strip_prefix("STATS ") {
            stats = parse_stats(target, json);
        }
    }
    let status = process.wait().map_err(|e| err(e.to_string()))?;
    let stderr = stderr.join().unwrap_or_default();
    if status.success()
        && let Some(stats) = stats
    {
        return Ok(stats);
    }
    // The child died: what it was running is in last-input.
    let dir = opts.findings.join(target);
    let last = dir.join("last-input");
    let input = std::fs::read(&last).map_err(|e| {
        err(format!(
            "{} with no input recorded ({e}); its stderr:\n{}",
            describe(&status),
            tail(&stderr)
        ))
    })?;
    let kind = if status.code() == Some(crate::EXIT_TIMEOUT) {
        "timeout"
    } else {
        "crash"
    };
    let message = format!("{}; stderr:\n{}", describe(&status), tail(&stderr));
    let path = engine::write_finding(&dir, &input, &message)?;
    Ok(Stats {
        target: target.to_string(),
        executions,
        elapsed: begin.elapsed(),
        distinct_outcomes: 0,
        corpus: 0,
        findings: vec![Finding {
            kind,
            message,
            input,
            path: Some(path),
        }],
    })
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(crate::EXIT_TIMEOUT), _) => "one input ran past the timeout".into(),
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".into(),
    }
}

/// The first and last lines of a child's stderr: the reason of an abort comes first
/// ("memory allocation of N bytes failed", "has overflowed its stack"), then frames.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= 60 {
        return lines.join("\n");
    }
    format!(
        "{}\n...\n{}",
        lines[..20].join("\n"),
        lines[lines.len() - 40..].join("\n")
    )
}
