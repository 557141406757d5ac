//! `show`: the first rows as a bordered text table, like Spark's `df.show()`.

use arrow::util::pretty::pretty_format_batches;
use ember_core::Result;

use super::DataFrame;

impl DataFrame {
    /// Prints the first `n` rows as a table.
    pub async fn show(&self, n: usize) -> Result<()> {
        println!("{}", self.show_string(n).await?);
        Ok(())
    }

    /// The first `n` rows as a table with `+---+` borders, followed by
    /// `only showing top n rows` when there are more.
    pub async fn show_string(&self, n: usize) -> Result<String> {
        // One extra row tells whether there are more than `n`.
        let rows = self.take(n.saturating_add(1)).await?;
        let more = rows.num_rows() > n;
        let shown = rows.slice(0, rows.num_rows().min(n));
        let mut out = pretty_format_batches(&[shown])?.to_string();
        if more {
            out.push_str(&format!("\nonly showing top {n} rows"));
        }
        Ok(out)
    }
}
