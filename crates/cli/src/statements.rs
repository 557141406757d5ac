//! Splitting shell input into statements.
//!
//! SQL statements end with `;` outside quotes and comments, so they can span lines.
//! Shell commands start with `\` and end at the end of their line, except those
//! whose argument is a query (`\stages`, `\analyze`): they end with `;` like one.

/// Accumulates input and hands out complete statements.
#[derive(Debug, Default)]
pub struct StatementBuffer {
    text: String,
}

impl StatementBuffer {
    /// Adds one line of input; returns the statements it completed.
    pub fn push_line(&mut self, line: &str) -> Vec<String> {
        self.text.push_str(line);
        self.text.push('\n');
        let (done, rest) = split(&self.text);
        self.text = rest;
        done
    }

    /// Whether a statement has been started but not finished.
    pub fn is_pending(&self) -> bool {
        !is_blank(&self.text)
    }

    pub fn clear(&mut self) {
        self.text.clear();
    }

    /// Ends input: what is left, if anything, is the last statement.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.text);
        (!is_blank(&rest)).then(|| rest.trim().to_string())
    }
}

/// All statements of a script (`-e`, `-f`); the last one needs no `;`.
pub fn split_script(script: &str) -> Vec<String> {
    let (mut done, rest) = split(script);
    if !is_blank(&rest) {
        done.push(rest.trim().to_string());
    }
    done
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Code,
    SingleQuote,
    DoubleQuote,
    LineComment,
    BlockComment,
}

/// Splits the complete statements off `text`: (statements, unfinished rest).
/// Statements are trimmed and have no trailing `;`; blank ones are dropped.
fn split(text: &str) -> (Vec<String>, String) {
    let mut statements = Vec::new();
    let mut state = State::Code;
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        match state {
            State::Code => match c {
                '\'' => state = State::SingleQuote,
                '"' => state = State::DoubleQuote,
                '-' if next == Some('-') => state = State::LineComment,
                '/' if next == Some('*') => {
                    chars.next();
                    state = State::BlockComment;
                }
                ';' => {
                    push_statement(&mut statements, &text[start..i]);
                    start = i + 1;
                }
                '\n' if is_line_command(&text[start..i]) => {
                    push_statement(&mut statements, &text[start..i]);
                    start = i + 1;
                }
                _ => {}
            },
            State::SingleQuote if c == '\'' => state = State::Code,
            State::DoubleQuote if c == '"' => state = State::Code,
            State::LineComment if c == '\n' => {
                state = State::Code;
                if is_line_command(&text[start..i]) {
                    push_statement(&mut statements, &text[start..i]);
                    start = i + 1;
                }
            }
            State::BlockComment if c == '*' && next == Some('/') => {
                chars.next();
                state = State::Code;
            }
            _ => {}
        }
    }
    (statements, text[start..].to_string())
}

fn push_statement(statements: &mut Vec<String>, text: &str) {
    if !is_blank(text) {
        statements.push(text.trim().to_string());
    }
}

/// Shell commands whose argument is a query, which ends with `;` and may span lines.
const QUERY_COMMANDS: [&str; 2] = ["stages", "analyze"];

/// A shell command that ends at the end of its line (`\q`, `\d`, `\?`).
fn is_line_command(text: &str) -> bool {
    let Some(command) = text.trim_start().strip_prefix('\\') else {
        return false;
    };
    let name = command.split(char::is_whitespace).next().unwrap_or("");
    !QUERY_COMMANDS.contains(&name)
}

/// Whether `text` holds nothing but whitespace and comments.
fn is_blank(text: &str) -> bool {
    let mut rest = text.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r
                .split_once('\n')
                .map_or("", |(_, after)| after)
                .trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            match r.split_once("*/") {
                Some((_, after)) => rest = after.trim_start(),
                None => return false, // an open comment is an unfinished statement
            }
        } else {
            return rest.is_empty();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolons_inside_quotes_and_comments_do_not_end_a_statement() {
        let s = split_script("select ';' as a, \"x;y\" -- c;\n from t /* ; */; select 2");
        assert_eq!(
            s,
            vec![
                "select ';' as a, \"x;y\" -- c;\n from t /* ; */",
                "select 2"
            ]
        );
    }

    #[test]
    fn statements_span_lines_until_the_semicolon() {
        let mut buf = StatementBuffer::default();
        assert!(buf.push_line("select").is_empty());
        assert!(buf.is_pending());
        assert_eq!(buf.push_line("1; select 2;"), vec!["select\n1", "select 2"]);
        assert!(!buf.is_pending());
    }

    #[test]
    fn shell_commands_end_at_the_line_but_query_commands_end_at_the_semicolon() {
        let mut buf = StatementBuffer::default();
        assert_eq!(buf.push_line("\\d"), vec!["\\d"]);
        assert!(buf.push_line("\\stages select *").is_empty());
        assert_eq!(buf.push_line("from t;"), vec!["\\stages select *\nfrom t"]);
        assert_eq!(
            split_script("\\analyze select a,\n b from t\n order by a;\n\\d"),
            vec!["\\analyze select a,\n b from t\n order by a", "\\d"]
        );
        // A name that only starts like one is a line command.
        assert_eq!(
            split_script("\\stagesx\nselect 1"),
            vec!["\\stagesx", "select 1"]
        );
    }

    #[test]
    fn comments_and_blank_statements_are_dropped() {
        assert!(split_script("-- only a comment\n ; ;").is_empty());
        let mut buf = StatementBuffer::default();
        assert!(buf.push_line("/* open").is_empty());
        assert!(buf.is_pending());
        assert_eq!(buf.finish().as_deref(), Some("/* open"));
    }
}
