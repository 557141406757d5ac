//! The DataFrame API end to end: every transformation and action on small
//! hand-made data with known answers, run through the session's scheduler.

mod actions;
mod io;
mod joins;
mod sources;
mod transforms;
pub(crate) mod udfs;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use arrow::util::display::array_value_to_string;
use ember_driver::{DataFrame, Result, Session};

pub(crate) fn session() -> Result<Session> {
    Session::builder().master("local[2]").build()
}

pub(crate) fn ints(values: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(values.to_vec()))
}

pub(crate) fn strs(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

pub(crate) fn batch(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_from_iter(columns)?)
}

/// id, name, dept, salary: five people in three departments.
pub(crate) fn people(session: &Session) -> Result<DataFrame> {
    session.create_dataframe(vec![batch(vec![
        ("id", ints(&[1, 2, 3, 4, 5])),
        ("name", strs(&["ann", "bob", "cid", "dan", "eve"])),
        ("dept", strs(&["eng", "eng", "ops", "ops", "hr"])),
        ("salary", ints(&[100, 80, 70, 90, 60])),
    ])?])
}

/// Every row as strings (`null` for nulls), in the order the job returned them.
pub(crate) fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>> {
    let mut out = vec![];
    for b in batches {
        for r in 0..b.num_rows() {
            let row = b
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(r) {
                        Ok("null".to_string())
                    } else {
                        array_value_to_string(c, r)
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            out.push(row);
        }
    }
    Ok(out)
}

/// [`rows`], sorted, for results whose order is not defined.
pub(crate) fn sorted_rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>> {
    let mut out = rows(batches)?;
    out.sort();
    Ok(out)
}

/// Expected rows written as string slices.
pub(crate) fn table(expected: &[&[&str]]) -> Vec<Vec<String>> {
    expected
        .iter()
        .map(|r| r.iter().map(|c| c.to_string()).collect())
        .collect()
}

/// The error message of a result that must have failed.
pub(crate) fn error_of<T: std::fmt::Debug>(result: Result<T>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}
