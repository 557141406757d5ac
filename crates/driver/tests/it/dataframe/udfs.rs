//! User-defined functions: a scalar UDF and an aggregate UDF, from SQL and from
//! DataFrame expressions.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{Accumulator, ColumnarValue, Volatility, create_udaf, create_udf};
use ember_driver::Result;
use ember_driver::functions::col;

use super::{people, session, sorted_rows, table};

fn add_one() -> datafusion::logical_expr::ScalarUDF {
    create_udf(
        "add_one",
        vec![DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let plus: arrow::array::Int64Array = arrays[0]
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map(|v| v + 1))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(plus)))
        }),
    )
}

/// Sum of squares: state is the running sum.
#[derive(Debug, Default)]
struct SumSquares {
    total: i64,
}

impl Accumulator for SumSquares {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DFResult<()> {
        self.total += values[0]
            .as_primitive::<Int64Type>()
            .iter()
            .flatten()
            .map(|v| v * v)
            .sum::<i64>();
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DFResult<()> {
        self.total += states[0]
            .as_primitive::<Int64Type>()
            .iter()
            .flatten()
            .sum::<i64>();
        Ok(())
    }

    fn state(&mut self) -> DFResult<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Int64(Some(self.total))])
    }

    fn evaluate(&mut self) -> DFResult<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.total)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

pub(crate) fn sum_squares() -> datafusion::logical_expr::AggregateUDF {
    create_udaf(
        "sum_squares",
        vec![DataType::Int64],
        Arc::new(DataType::Int64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(SumSquares::default()))),
        Arc::new(vec![DataType::Int64]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalar_udf_works_in_sql_and_in_the_dataframe() -> Result<()> {
    let s = session()?;
    let made_before = people(&s)?;
    let udf = add_one();
    s.register_udf(udf.clone());
    people(&s)?.create_or_replace_temp_view("people")?;

    let sql = s
        .sql("SELECT add_one(salary) AS raised FROM people WHERE id <= 2")
        .await?;
    assert_eq!(
        sorted_rows(&sql.collect().await?)?,
        table(&[&["101"], &["81"]])
    );

    let df = people(&s)?
        .filter(col("id").lt_eq(datafusion::prelude::lit(2)))?
        .select(vec![udf.call(vec![col("salary")]).alias("raised")])?;
    assert_eq!(
        sorted_rows(&df.collect().await?)?,
        table(&[&["101"], &["81"]])
    );

    // select_expr sees it too, even on a frame made before it was registered.
    let parsed = made_before.select_expr(&["add_one(id) AS next"])?;
    assert_eq!(
        sorted_rows(&parsed.collect().await?)?,
        table(&[&["2"], &["3"], &["4"], &["5"], &["6"]])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_udf_works_in_sql_and_in_agg() -> Result<()> {
    let s = session()?;
    let udaf = sum_squares();
    s.register_udaf(udaf.clone());
    people(&s)?.create_or_replace_temp_view("people")?;

    let sql = s
        .sql("SELECT dept, sum_squares(salary) AS sq FROM people GROUP BY dept")
        .await?;
    let expected = table(&[&["eng", "16400"], &["hr", "3600"], &["ops", "13000"]]);
    assert_eq!(sorted_rows(&sql.collect().await?)?, expected);

    let df = people(&s)?
        .group_by(vec![col("dept")])
        .agg(vec![udaf.call(vec![col("salary")]).alias("sq")])?;
    assert_eq!(sorted_rows(&df.collect().await?)?, expected);
    Ok(())
}
