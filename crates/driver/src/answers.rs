//! Whether two engines gave the same answer to a query: row for row when the query
//! orders its output, as multisets otherwise; floating-point values within a relative
//! 1e-6 (sums over other partitionings round differently), everything else as
//! displayed. The TPC-H tests and `ember bench` both check answers with it.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::Result;

/// One value of a result, as compared.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Float(f64),
    Text(String),
}

/// The rows of `batches`, in order.
pub fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<Cell>>> {
    let mut out = Vec::new();
    for b in batches {
        let formats = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for r in 0..b.num_rows() {
            let row = b
                .columns()
                .iter()
                .zip(&formats)
                .map(|(c, f)| match c.data_type() {
                    DataType::Float64 if c.is_valid(r) => {
                        Cell::Float(c.as_primitive::<Float64Type>().value(r))
                    }
                    DataType::Float32 if c.is_valid(r) => {
                        Cell::Float(c.as_primitive::<Float32Type>().value(r) as f64)
                    }
                    _ => Cell::Text(f.value(r).to_string()),
                })
                .collect();
            out.push(row);
        }
    }
    Ok(out)
}

fn sort_key(row: &[Cell]) -> String {
    row.iter()
        .map(|c| match c {
            Cell::Float(f) => format!("{f:.2}"),
            Cell::Text(t) => t.clone(),
        })
        .collect::<Vec<_>>()
        .join("|")
}

fn same_row(a: &[Cell], b: &[Cell]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Cell::Float(x), Cell::Float(y)) => {
                (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0)
            }
            _ => x == y,
        })
}

/// How `got` differs from `expected` (the row count, or the first row that differs),
/// or `None` when they are the same answer.
pub fn difference(
    ordered: bool,
    got: &[RecordBatch],
    expected: &[RecordBatch],
) -> Result<Option<String>> {
    let (mut g, mut e) = (rows(got)?, rows(expected)?);
    if g.len() != e.len() {
        return Ok(Some(format!("{} rows, expected {}", g.len(), e.len())));
    }
    if !ordered {
        g.sort_by_cached_key(|r| sort_key(r));
        e.sort_by_cached_key(|r| sort_key(r));
    }
    Ok(g.iter()
        .zip(&e)
        .position(|(a, b)| !same_row(a, b))
        .map(|i| format!("row {i} is {:?}, expected {:?}", g[i], e[i])))
}

/// Whether a query's answer has a defined order (it ends in an `ORDER BY`).
pub fn is_ordered(sql: &str) -> bool {
    sql.to_lowercase().contains("order by")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(keys: &[i64], values: &[f64]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Float64, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(Float64Array::from(values.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn unordered_answers_compare_as_multisets_with_float_tolerance() {
        let a = batch(&[1, 2], &[10.0, 20.000_000_001]);
        let b = batch(&[2, 1], &[20.0, 10.0]);
        let (a, b) = (vec![a], vec![b]);
        assert_eq!(difference(false, &a, &b).unwrap(), None);
        let diff = difference(true, &a, &b).unwrap().unwrap();
        assert!(diff.starts_with("row 0 is"), "{diff}");
    }

    #[test]
    fn a_different_value_or_count_is_named() {
        let a = batch(&[1, 2], &[10.0, 20.0]);
        let b = batch(&[1, 2], &[10.0, 20.1]);
        let a = vec![a];
        let diff = difference(false, &a, &[b]).unwrap().unwrap();
        assert!(diff.contains("row 1"), "{diff}");
        let c = batch(&[1], &[10.0]);
        assert_eq!(
            difference(false, &a, &[c]).unwrap().as_deref(),
            Some("2 rows, expected 1")
        );
    }
}
