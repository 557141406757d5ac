//! `explain`: the plans a frame would run, from logical plan to ember's stage DAG.

use datafusion::physical_plan::displayable;
use ember_core::Result;

use super::DataFrame;

/// How much [`DataFrame::explain`] shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExplainMode {
    /// The optimized logical plan, the physical plan and the stage DAG.
    #[default]
    Simple,
    /// Also the logical plan as written, and the optimized plan with schemas.
    Extended,
    /// Runs the frame (its rows are dropped), then adds `== Stage DAG (as run) ==`:
    /// each stage adaptive execution planned again when it started, with what it
    /// decided and its plan as it ran.
    Analyze,
}

impl DataFrame {
    /// The plans as text, in sections `== Logical Plan ==`, `== Physical Plan ==` and
    /// `== Stage DAG ==` (and, when extended, `== Parsed Logical Plan ==` first).
    /// Plans only and runs nothing, but with [`ExplainMode::Analyze`].
    pub async fn explain(&self, mode: ExplainMode) -> Result<String> {
        // Printing deep expressions recurses as deep as planning them.
        let frame = self.clone();
        crate::planning::on_planning_stack(async move { frame.explain_here(mode).await }).await
    }

    async fn explain_here(&self, mode: ExplainMode) -> Result<String> {
        let plan = self.logical_plan();
        let optimized = self.session.context().state().optimize(plan)?;
        let physical = self.session.create_physical_plan(plan).await?;
        let stages = self.session.explain_stages(plan).await?;
        let mut out = String::new();
        if mode == ExplainMode::Extended {
            out.push_str(&format!(
                "== Parsed Logical Plan ==\n{}\n\n",
                plan.display_indent_schema()
            ));
        }
        let logical = match mode {
            ExplainMode::Extended => optimized.display_indent_schema().to_string(),
            _ => optimized.display_indent().to_string(),
        };
        out.push_str(&format!("== Logical Plan ==\n{logical}\n\n"));
        out.push_str(&format!(
            "== Physical Plan ==\n{}\n",
            displayable(physical.as_ref()).indent(true)
        ));
        out.push_str(&format!("== Stage DAG ==\n{stages}"));
        if mode == ExplainMode::Analyze {
            let adapted = self.session.run_for_adaptive_plans(plan).await?;
            out.push_str("\n== Stage DAG (as run) ==\n");
            if adapted.is_empty() {
                out.push_str("every stage ran as planned\n");
            }
            for stage in adapted {
                out.push_str(&stage);
            }
        }
        Ok(out)
    }

    /// Prints [`explain`](Self::explain).
    pub async fn print_explain(&self, mode: ExplainMode) -> Result<()> {
        println!("{}", self.explain(mode).await?);
        Ok(())
    }
}
