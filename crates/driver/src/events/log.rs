//! The event log, as Spark's: with `ember.eventlog.dir` set, every event of the
//! application goes to `<dir>/<app-id>.jsonl.inprogress`, one JSON object a line,
//! renamed to `<app-id>.jsonl` when the session stops. A writer thread, off the
//! scheduler's loop, writes and flushes each line on its own as it takes it, so the
//! file is always whole lines but for, after a crash, a last one cut short (and a
//! crash loses only the events still queued for the writer, which keeps up line by
//! line). `ember history` reads the logs back with [`read_log`], skipping (and
//! naming) any line it cannot parse.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use ember_core::{EmberError, Result};
use parking_lot::Mutex;

use super::{AppEvent, Listener};

/// The suffix of a log whose application has not stopped (or crashed).
pub(crate) const IN_PROGRESS: &str = ".inprogress";

enum Line {
    Event(Box<AppEvent>),
    /// Flush, rename to the final name, and answer.
    Close(mpsc::Sender<()>),
}

/// Writes the events it hears to the application's log file.
pub(crate) struct EventLogWriter {
    lines: Mutex<Option<mpsc::Sender<Line>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EventLogWriter {
    /// A writer into `dir` (created if missing); the file is named after the
    /// application when its `AppStarted` event arrives.
    pub(crate) fn start(dir: &Path) -> Result<EventLogWriter> {
        std::fs::create_dir_all(dir).map_err(|e| EmberError::io(dir.display(), e))?;
        let (tx, rx) = mpsc::channel::<Line>();
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("ember-event-log".into())
            .spawn(move || write_lines(&dir, rx))
            .map_err(|e| EmberError::io("the event log's writer thread", e))?;
        Ok(EventLogWriter {
            lines: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Writes what is queued, gives the file its final name and stops; later events
    /// are not logged. Idempotent.
    pub(crate) fn close(&self) {
        let Some(lines) = self.lines.lock().take() else {
            return;
        };
        let (done, closed) = mpsc::channel();
        if lines.send(Line::Close(done)).is_ok() {
            let _ = closed.recv();
        }
        drop(lines);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for EventLogWriter {
    fn drop(&mut self) {
        self.close();
    }
}

impl Listener for EventLogWriter {
    fn on_event(&self, event: &AppEvent) {
        if let Some(lines) = self.lines.lock().as_ref() {
            let _ = lines.send(Line::Event(Box::new(event.clone())));
        }
    }
}

struct Open {
    file: std::fs::File,
    path: PathBuf,
}

fn write_lines(dir: &Path, lines: mpsc::Receiver<Line>) {
    let mut open: Option<Open> = None;
    // Once writing failed, the log is given up (with one warning), not the session.
    let mut broken = false;
    for line in lines {
        match line {
            Line::Event(event) => {
                if broken {
                    continue;
                }
                if let AppEvent::AppStarted { app_id, .. } = event.as_ref() {
                    let name = format!("{}.jsonl{IN_PROGRESS}", safe_name(app_id));
                    let path = dir.join(name);
                    match std::fs::File::create(&path) {
                        Ok(file) => open = Some(Open { file, path }),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot write the event log");
                            broken = true;
                            continue;
                        }
                    }
                }
                let Some(o) = open.as_mut() else {
                    continue;
                };
                let mut text = match serde_json::to_string(&event) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "an event could not be serialized");
                        continue;
                    }
                };
                text.push('\n');
                // One write per line: a crash cuts at most this line.
                if let Err(e) = o
                    .file
                    .write_all(text.as_bytes())
                    .and_then(|()| o.file.flush())
                {
                    tracing::warn!(path = %o.path.display(), error = %e, "writing the event log failed; it stops here");
                    broken = true;
                }
            }
            Line::Close(done) => {
                if let Some(o) = open.take() {
                    let _ = o.file.sync_all();
                    let name = o.path.to_string_lossy();
                    let done_path = PathBuf::from(name.trim_end_matches(IN_PROGRESS));
                    if let Err(e) = std::fs::rename(&o.path, &done_path) {
                        tracing::warn!(path = %o.path.display(), error = %e, "cannot rename the finished event log");
                    }
                }
                let _ = done.send(());
                return;
            }
        }
    }
}

/// An application id as a file name: nothing but `[A-Za-z0-9._-]`.
fn safe_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The event logs in `dir`: finished (`.jsonl`) and in progress, by name.
pub(crate) fn list_logs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| EmberError::io(dir.display(), e))?;
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_string());
            name.is_some_and(|n| n.ends_with(".jsonl") || n.ends_with(".jsonl.inprogress"))
        })
        .collect();
    logs.sort();
    Ok(logs)
}

/// The events of one log. A line that is not an event (corrupt, or cut short by a
/// crash) is skipped with a warning naming the file and the line.
pub(crate) fn read_log(path: &Path) -> Result<Vec<AppEvent>> {
    let file = std::fs::File::open(path).map_err(|e| EmberError::io(path.display(), e))?;
    let mut events = vec![];
    for (n, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|e| EmberError::io(path.display(), e))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<AppEvent>(&line) {
            Ok(e) => events.push(e),
            Err(e) => tracing::warn!(
                file = %path.display(),
                line = n + 1,
                error = %e,
                "skipping an event log line that is not an event"
            ),
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{JobStatus, ListenerBus};

    #[test]
    fn a_log_is_renamed_when_closed_and_reads_back_skipping_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let writer = std::sync::Arc::new(EventLogWriter::start(dir.path()).unwrap());
        let bus = ListenerBus::new();
        bus.add(writer.clone());
        bus.post(AppEvent::AppStarted {
            app_id: "app-1/x".into(),
            name: "t".into(),
            master: "local[1]".into(),
            time_ms: 1,
        });
        bus.post(AppEvent::JobEnded {
            job: 1,
            status: JobStatus::Succeeded,
            error: None,
            time_ms: 2,
        });
        writer.close();
        let logs = list_logs(dir.path()).unwrap();
        assert_eq!(logs, vec![dir.path().join("app-1_x.jsonl")]);
        let mut text = std::fs::read_to_string(&logs[0]).unwrap();
        text.insert_str(0, "{not json\n\u{0}\u{1}\n");
        text.push_str("{\"event\":\"job_ended\",\"job\":");
        std::fs::write(&logs[0], text).unwrap();
        let events = read_log(&logs[0]).unwrap();
        assert_eq!(events.len(), 2);
        assert!(matches!(events[1], AppEvent::JobEnded { job: 1, .. }));
    }
}
