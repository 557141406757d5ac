//! Printing results (aligned table, CSV, JSON) and errors.

use std::io::Write;

use anyhow::Result;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use ember_core::EmberError;

/// How `ember sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned table followed by the row count and time.
    Table,
    /// CSV with a header line, and nothing else.
    Csv,
    /// A JSON array of objects per statement, and nothing else.
    Json,
}

/// Rows an aligned table is printed in at a time: each piece is aligned on its own,
/// so a result prints as it arrives rather than once it is whole.
const TABLE_CHUNK_ROWS: usize = 1000;

/// Writes one statement's result as its batches arrive, in any [`Format`].
/// Statements without columns (DDL, `SET`) print nothing.
pub struct ResultWriter<W: Write> {
    schema: SchemaRef,
    rows: usize,
    sink: Sink<W>,
}

enum Sink<W: Write> {
    /// Statements without columns.
    Nothing,
    Table {
        out: W,
        pending: Vec<RecordBatch>,
        pending_rows: usize,
        printed_header: bool,
    },
    Csv {
        out: W,
    },
    Json(arrow::json::ArrayWriter<W>),
}

impl<W: Write> ResultWriter<W> {
    pub fn new(out: W, format: Format, schema: SchemaRef) -> Result<Self> {
        let sink = if schema.fields().is_empty() {
            Sink::Nothing
        } else {
            match format {
                Format::Table => Sink::Table {
                    out,
                    pending: vec![],
                    pending_rows: 0,
                    printed_header: false,
                },
                Format::Csv => {
                    let mut out = out;
                    // An empty result still gets its header line.
                    arrow::csv::WriterBuilder::new()
                        .with_header(true)
                        .build(&mut out)
                        .write(&RecordBatch::new_empty(schema.clone()))?;
                    Sink::Csv { out }
                }
                Format::Json => Sink::Json(arrow::json::ArrayWriter::new(out)),
            }
        };
        Ok(ResultWriter {
            schema,
            rows: 0,
            sink,
        })
    }

    /// Writes (or, for a table, may hold back until a piece is full) one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows();
        match &mut self.sink {
            Sink::Nothing => {}
            Sink::Table {
                pending,
                pending_rows,
                ..
            } => {
                pending.push(batch.clone());
                *pending_rows += batch.num_rows();
                if *pending_rows >= TABLE_CHUNK_ROWS {
                    self.print_table_piece()?;
                }
            }
            Sink::Csv { out } => {
                arrow::csv::WriterBuilder::new()
                    .with_header(false)
                    .build(&mut *out)
                    .write(batch)?;
                out.flush()?;
            }
            Sink::Json(writer) => {
                writer.write(batch)?;
                writer.get_mut().flush()?;
            }
        }
        Ok(())
    }

    /// Writes what is held back and the format's ending; returns the rows written.
    pub fn finish(mut self) -> Result<usize> {
        match &mut self.sink {
            Sink::Nothing => {}
            Sink::Table {
                pending,
                printed_header,
                ..
            } => {
                if !pending.is_empty() || !*printed_header {
                    self.print_table_piece()?;
                }
            }
            Sink::Csv { out } => out.flush()?,
            Sink::Json(writer) => {
                writer.finish()?;
                let out = writer.get_mut();
                writeln!(out)?;
                out.flush()?;
            }
        }
        Ok(self.rows)
    }

    /// Prints the held rows as an aligned table; after the first piece without the
    /// header.
    fn print_table_piece(&mut self) -> Result<()> {
        let Sink::Table {
            out,
            pending,
            pending_rows,
            printed_header,
        } = &mut self.sink
        else {
            return Ok(());
        };
        let table =
            arrow::util::pretty::pretty_format_batches_with_schema(self.schema.clone(), pending)?
                .to_string();
        let skip = if *printed_header { 3 } else { 0 };
        for line in table.lines().skip(skip) {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        pending.clear();
        *pending_rows = 0;
        *printed_header = true;
        Ok(())
    }
}

/// Writes one statement's whole result.
pub fn write_result(
    out: &mut impl Write,
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<()> {
    let mut writer = ResultWriter::new(out, format, schema.clone())?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(())
}

/// `3 rows in 0.123s`
pub fn summary(rows: usize, elapsed: std::time::Duration) -> String {
    let noun = if rows == 1 { "row" } else { "rows" };
    format!("{rows} {noun} in {:.3}s", elapsed.as_secs_f64())
}

/// An error as one line: its message, then those causes the message does not
/// already contain. ember's and DataFusion's messages already include their causes.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for err in e.chain() {
        let message = match err.downcast_ref::<EmberError>() {
            Some(ember) => ember.one_line(),
            None => err.to_string().replace('\n', " "),
        };
        if !line.contains(&message) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&message);
        }
        if err.is::<EmberError>() || err.is::<DataFusionError>() {
            break;
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a,b"), None])),
            ],
        )
        .unwrap()
    }

    fn render(format: Format, batches: &[RecordBatch]) -> String {
        let mut out = Vec::new();
        write_result(&mut out, format, &batch().schema(), batches).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_is_a_header_and_the_rows() {
        assert_eq!(render(Format::Csv, &[batch()]), "n,s\n1,\"a,b\"\n2,\n");
        assert_eq!(render(Format::Csv, &[]), "n,s\n");
    }

    #[test]
    fn json_is_one_array_of_objects() {
        assert_eq!(
            render(Format::Json, &[batch()]),
            "[{\"n\":1,\"s\":\"a,b\"},{\"n\":2}]\n"
        );
        assert_eq!(render(Format::Json, &[]), "[]\n");
    }

    #[test]
    fn a_long_table_prints_in_pieces_with_one_header() {
        let many: Vec<RecordBatch> = (0..1500).map(|_| batch()).collect();
        let text = render(Format::Table, &many);
        assert_eq!(text.matches("| n | s ").count(), 1, "one header");
        assert_eq!(text.lines().filter(|l| l.starts_with("| 1 ")).count(), 1500);
    }

    #[test]
    fn an_empty_table_still_shows_its_columns() {
        assert!(render(Format::Table, &[]).contains("| n | s |"));
    }

    #[test]
    fn one_line_does_not_repeat_causes_already_in_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = anyhow::Error::new(EmberError::io("/x", io));
        assert_eq!(one_line(&e), "I/O error on /x: gone");
        let e = anyhow::anyhow!("a\nb").context("top");
        assert_eq!(one_line(&e), "top: a b");
    }

    #[test]
    fn a_sql_syntax_error_is_reported_once() {
        use datafusion::sql::sqlparser::parser::ParserError;
        let parse = ParserError::ParserError("Expected: an SQL statement, found: SELEC".into());
        let e = anyhow::Error::new(EmberError::from(DataFusionError::SQL(
            Box::new(parse),
            None,
        )));
        let line = one_line(&e);
        assert_eq!(line.matches("found: SELEC").count(), 1, "{line}");
    }
}
