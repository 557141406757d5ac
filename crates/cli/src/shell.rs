//! The interactive SQL shell: line editing and history (`~/.ember_history`) on a
//! terminal, plain lines from a pipe.
//!
//! ```text
//!   read line --> StatementBuffer --complete statement--> Runner::run --> print
//!      ^   Ctrl-C: clear buffer                              | Ctrl-C: cancel job
//!      +------------------------------------------------------+ errors: print, go on
//! ```

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::output::one_line;
use crate::sql::{Outcome, Runner};
use crate::statements::StatementBuffer;

const PROMPT: &str = "ember> ";
const CONTINUATION: &str = "   ...> ";

/// Runs the shell until Ctrl-D, `\q` or the end of piped input. Piped input exits
/// non-zero if any statement failed; a terminal session always exits zero.
pub async fn run(runner: &Runner) -> Result<ExitCode> {
    let mut input = Input::open();
    if input.is_terminal() {
        println!(
            "ember {} ({:?}). End statements with ';'; \\? for help, Ctrl-D to exit.",
            env!("CARGO_PKG_VERSION"),
            runner.session.master()
        );
    }
    let mut buffer = StatementBuffer::default();
    let mut failed = false;
    loop {
        let prompt = if buffer.is_pending() {
            CONTINUATION
        } else {
            PROMPT
        };
        let (statements, last) = match input.read_line(prompt).await? {
            Read::Line(line) => (buffer.push_line(&line), false),
            Read::Interrupted => {
                buffer.clear();
                continue;
            }
            Read::Cancelled => return Ok(ExitCode::from(130)),
            Read::Eof if input.is_terminal() => break,
            // The end of piped input ends its last statement, `;` or not.
            Read::Eof => (buffer.finish().into_iter().collect(), true),
        };
        for statement in statements {
            input.add_history(&statement);
            match runner.run(&statement).await {
                Ok(Outcome::Continue) => {}
                Ok(Outcome::Quit) => return Ok(input.close(failed)),
                Err(e) => {
                    eprintln!("Error: {}", one_line(&e));
                    failed = true;
                }
            }
        }
        if last {
            break;
        }
    }
    Ok(input.close(failed))
}

enum Read {
    Line(String),
    /// Ctrl-C at the prompt: forget the unfinished statement.
    Interrupted,
    /// Ctrl-C while reading a pipe: stop.
    Cancelled,
    Eof,
}

enum Input {
    /// A line editor, taken out while a blocking thread reads with it.
    Terminal {
        editor: Option<Box<DefaultEditor>>,
        history: Option<PathBuf>,
    },
    Piped,
}

impl Input {
    fn open() -> Input {
        if !std::io::stdin().is_terminal() {
            return Input::Piped;
        }
        match DefaultEditor::new() {
            Ok(mut editor) => {
                let history =
                    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".ember_history"));
                if let Some(path) = &history {
                    // A missing history file is the normal first run.
                    let _ = editor.load_history(path);
                }
                Input::Terminal {
                    editor: Some(Box::new(editor)),
                    history,
                }
            }
            Err(e) => {
                eprintln!("warning: no line editor ({e}); reading plain lines");
                Input::Piped
            }
        }
    }

    fn is_terminal(&self) -> bool {
        matches!(self, Input::Terminal { .. })
    }

    async fn read_line(&mut self, prompt: &str) -> Result<Read> {
        match self {
            Input::Terminal { editor, .. } => {
                let Some(mut ed) = editor.take() else {
                    anyhow::bail!("the line editor was lost after an earlier failure");
                };
                let prompt = prompt.to_string();
                let (ed, line) = tokio::task::spawn_blocking(move || {
                    let line = ed.readline(&prompt);
                    (ed, line)
                })
                .await?;
                *editor = Some(ed);
                match line {
                    Ok(line) => Ok(Read::Line(line)),
                    Err(ReadlineError::Interrupted) => Ok(Read::Interrupted),
                    Err(ReadlineError::Eof) => Ok(Read::Eof),
                    Err(e) => Err(e.into()),
                }
            }
            Input::Piped => {
                let read = tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .map(|n| (n, line))
                });
                // Nothing else stops on Ctrl-C once the query handler has taken the
                // signal, so the pipe reader honours it too.
                let (n, line) = tokio::select! {
                    read = read => read??,
                    _ = tokio::signal::ctrl_c() => return Ok(Read::Cancelled),
                };
                if n == 0 {
                    return Ok(Read::Eof);
                }
                Ok(Read::Line(line.trim_end_matches(['\n', '\r']).to_string()))
            }
        }
    }

    fn add_history(&mut self, statement: &str) {
        if let Input::Terminal {
            editor: Some(editor),
            ..
        } = self
        {
            let _ = editor.add_history_entry(statement);
        }
    }

    /// Saves the history and gives the shell's exit code.
    fn close(&mut self, failed: bool) -> ExitCode {
        match self {
            Input::Terminal { editor, history } => {
                if let (Some(editor), Some(path)) = (editor, history)
                    && let Err(e) = editor.save_history(path)
                {
                    eprintln!("warning: could not save history to {}: {e}", path.display());
                }
                ExitCode::SUCCESS
            }
            Input::Piped if failed => ExitCode::FAILURE,
            Input::Piped => ExitCode::SUCCESS,
        }
    }
}
