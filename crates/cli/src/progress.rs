//! The console progress bar: one `[Stage 3: ====>    (12 + 2) / 48]` per running
//! stage, on one stderr line redrawn in place, for jobs that run longer than
//! [`DELAY`]. Shown only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_driver::{JobProgress, Session};
use tokio::task::JoinHandle;

/// Jobs quicker than this never show a bar.
const DELAY: Duration = Duration::from_millis(500);
/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(100);
/// The width the whole line is kept within.
const LINE_WIDTH: usize = 80;

/// Draws the progress of `session`'s jobs while it lives; clears the line on drop.
pub struct ProgressBar {
    task: Option<JoinHandle<()>>,
    line: Arc<Mutex<Line>>,
}

/// What is on the terminal line now. Drawing and clearing take the lock, so the
/// bar can never be redrawn after it was cleared.
#[derive(Default)]
struct Line {
    width: usize,
    stopped: bool,
}

impl Line {
    fn draw(&mut self, text: &str) {
        if self.stopped || (text.is_empty() && self.width == 0) {
            return;
        }
        let pad = self.width.saturating_sub(text.chars().count());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{text}{:pad$}\r", "");
        let _ = err.flush();
        self.width = text.chars().count();
    }
}

impl ProgressBar {
    /// Starts watching `session`'s progress (a no-op unless stderr is a terminal).
    pub fn start(session: &Session) -> ProgressBar {
        let line = Arc::new(Mutex::new(Line::default()));
        if !std::io::stderr().is_terminal() {
            return ProgressBar { task: None, line };
        }
        let progress = session.progress();
        let task_line = line.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(DELAY).await;
            let mut tick = tokio::time::interval(TICK);
            let mut last = String::new();
            loop {
                tick.tick().await;
                let text = render(&progress.borrow(), LINE_WIDTH);
                if text != last {
                    task_line
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .draw(&text);
                    last = text;
                }
            }
        });
        ProgressBar {
            task: Some(task),
            line,
        }
    }
}

impl Drop for ProgressBar {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        line.draw("");
        line.stopped = true;
    }
}

/// The progress line for every running stage, within `width` columns (empty when
/// nothing runs).
pub fn render(progress: &JobProgress, width: usize) -> String {
    let stages = &progress.stages;
    if stages.is_empty() {
        return String::new();
    }
    let per_stage = width / stages.len();
    stages
        .iter()
        .map(|s| {
            let label = format!("[Stage {}: ", s.stage);
            let counts = format!(" ({} + {}) / {}]", s.done, s.running, s.total);
            let bar_width = per_stage.saturating_sub(label.len() + counts.len()).max(4);
            let filled = (s.done * bar_width)
                .checked_div(s.total)
                .unwrap_or(0)
                .min(bar_width);
            let mut bar = "=".repeat(filled);
            if filled < bar_width {
                bar.push('>');
            }
            format!("{label}{bar:<bar_width$}{counts}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_driver::StageProgress;

    fn stage(stage: usize, done: usize, running: usize, total: usize) -> StageProgress {
        StageProgress {
            job: 1,
            stage,
            total,
            running,
            done,
        }
    }

    #[test]
    fn a_stage_shows_done_plus_running_over_total() {
        let p = JobProgress {
            stages: vec![stage(3, 12, 2, 48)],
        };
        let line = render(&p, 40);
        assert!(line.starts_with("[Stage 3: ===>"), "{line}");
        assert!(line.ends_with(" (12 + 2) / 48]"), "{line}");
        assert_eq!(line.len(), 40);
    }

    #[test]
    fn stages_share_the_line_and_nothing_running_clears_it() {
        let p = JobProgress {
            stages: vec![stage(1, 4, 0, 4), stage(2, 0, 2, 8)],
        };
        let line = render(&p, 80);
        assert!(line.contains("[Stage 1: ====") && line.contains("(4 + 0) / 4]"));
        assert!(line.contains("[Stage 2: >") && line.contains("(0 + 2) / 8]"));
        assert!(line.len() <= 80);
        assert_eq!(render(&JobProgress::default(), 80), "");
    }
}
