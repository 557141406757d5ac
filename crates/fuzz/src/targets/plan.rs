//! `task_definition` and `plan`: what an executor decodes from the driver.
//!
//! `task_definition` is a `LaunchTasksRequest` as the executor's gRPC service gets
//! it: the protobuf message, [`task_definition_from_proto`], the task's settings
//! ([`session_config_from_pairs`]) and its stage plan. `plan` is the stage plan
//! alone: `datafusion-proto` bytes with ember's extension codec ([`decode_plan`]).
//! Seeds are real stage plans: SQL planned by a local session and cut into stages.

use std::sync::Arc;

use datafusion::execution::TaskContext;
use datafusion::prelude::SessionContext;
use ember_core::convert::{task_definition_from_proto, task_definition_to_proto};
use ember_core::proto;
use ember_exec::batch_fn::BatchFnRegistry;
use ember_exec::codec::{EmberCodec, decode_plan, encode_plan};
use ember_exec::task::{FunctionSet, TaskDefinition, TaskId, session_config_from_pairs};
use prost::Message;

use super::{KIB, Runner, Target, runtime, setup};
use crate::Result;
use crate::mutate::Dictionary;

pub fn plan() -> Target {
    Target {
        name: "plan",
        max_len: 64 * KIB,
        dictionary: Dictionary::default(),
        runner: || Ok(Box::new(Plans(Executor::new()?))),
        seeds: plan_seeds,
    }
}

pub fn task_definition() -> Target {
    Target {
        name: "task_definition",
        max_len: 64 * KIB,
        dictionary: Dictionary::default(),
        runner: || Ok(Box::new(Launches(Executor::new()?))),
        seeds: task_seeds,
    }
}

/// What an executor decodes plans with: ember's codec and functions.
struct Executor {
    runtime: tokio::runtime::Runtime,
    codec: EmberCodec,
    functions: FunctionSet,
    ctx: Arc<TaskContext>,
}

impl Executor {
    fn new() -> Result<Executor> {
        let config =
            session_config_from_pairs(&[]).map_err(|e| setup("task settings")(e.to_string()))?;
        let session = SessionContext::new_with_config(config);
        for f in ember_core::ember_functions() {
            session.register_udf(f);
        }
        Ok(Executor {
            runtime: runtime()?,
            codec: EmberCodec::new(Arc::new(BatchFnRegistry::default())),
            functions: FunctionSet::of(&session.state()),
            ctx: session.task_ctx(),
        })
    }

    fn launch(&self, input: &[u8]) -> std::result::Result<String, String> {
        let request = proto::LaunchTasksRequest::decode(input).map_err(|e| e.to_string())?;
        let mut plans = vec![];
        for task in request.tasks {
            let def = task_definition_from_proto(task).map_err(|e| e.to_string())?;
            let config = session_config_from_pairs(&def.config).map_err(|e| e.to_string())?;
            let f = self.functions.clone();
            let ctx = TaskContext::new(
                Some(def.id.to_string()),
                def.session_id.clone(),
                config,
                f.scalar,
                f.higher_order,
                f.aggregate,
                f.window,
                self.ctx.runtime_env(),
            );
            let plan = decode_plan(&def.plan, &ctx, &self.codec).map_err(|e| e.to_string())?;
            plans.push(plan.name().to_string());
        }
        Ok(plans.join(", "))
    }
}

struct Plans(Executor);

impl Runner for Plans {
    fn run(&mut self, input: &[u8]) -> std::result::Result<String, String> {
        let e = &self.0;
        let _enter = e.runtime.enter();
        let plan = decode_plan(input, &e.ctx, &e.codec).map_err(|e| e.to_string())?;
        Ok(plan.name().to_string())
    }
}

struct Launches(Executor);

impl Runner for Launches {
    fn run(&mut self, input: &[u8]) -> std::result::Result<String, String> {
        let _enter = self.0.runtime.enter();
        self.0.launch(input)
    }
}

const QUERIES: &[&str] = &[
    "SELECT 1",
    "SELECT a, b * 2 AS c FROM (VALUES (1, 'x'), (2, 'y')) AS t(a, s) CROSS JOIN (VALUES (3)) AS u(b) WHERE a > 0",
    "SELECT s, count(*), sum(a), min(a), max(a) FROM (VALUES (1, 'x'), (2, 'y'), (3, 'x')) AS t(a, s) GROUP BY s ORDER BY s",
    "SELECT t.a, u.b FROM (VALUES (1), (2)) AS t(a) JOIN (VALUES (1, 'one'), (2, 'two')) AS u(a, b) ON t.a = u.a",
    "SELECT a, row_number() OVER (PARTITION BY a % 2 ORDER BY a) FROM (VALUES (1), (2), (3)) AS t(a)",
    "SELECT DISTINCT upper(s), CASE WHEN a > 1 THEN 'big' ELSE NULL END, CAST(a AS DOUBLE) / 3 FROM (VALUES (1, 'x'), (2, 'y')) AS t(a, s) LIMIT 5",
    "SELECT value FROM generate_series(1, 100) UNION ALL SELECT 42",
    "SELECT a FROM (VALUES (1), (2)) AS t(a) WHERE a IN (SELECT 1) ORDER BY a DESC",
];

/// Every stage plan of the queries, as a local session cuts them.
fn stage_plans() -> Result<Vec<Vec<u8>>> {
    let rt = runtime()?;
    rt.block_on(async {
        let err = setup("planning seed queries");
        let session = ember_driver::Session::builder()
            .master("local[2]")
            .build()
            .map_err(|e| err(e.to_string()))?;
        let codec = EmberCodec::new(Arc::new(BatchFnRegistry::default()));
        let mut out = vec![];
        for sql in QUERIES {
            let df = session
                .sql(sql)
                .await
                .map_err(|e| err(format!("{sql}: {e}")))?;
            let stages = session
                .stage_plans(df.logical_plan())
                .await
                .map_err(|e| err(format!("{sql}: {e}")))?;
            for stage in stages {
                // A plan only local mode can run (shared by reference) is no seed.
                if let Ok(bytes) = encode_plan(stage, &codec) {
                    out.push(bytes.to_vec());
                }
            }
        }
        Ok(out)
    })
}

fn plan_seeds() -> Result<Vec<Vec<u8>>> {
    stage_plans()
}

// Messages gain fields over time; seeds set those they need.
#[allow(clippy::needless_update)]
fn task_seeds() -> Result<Vec<Vec<u8>>> {
    let plans = stage_plans()?;
    let mut out = vec![];
    for (i, plan) in plans.into_iter().enumerate() {
        let mut config = vec![("ember.task.max_failures".to_string(), "2".to_string())];
        config.extend(
            ember_exec::task::REQUIRED_DATAFUSION_SETTINGS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let def = TaskDefinition {
            id: TaskId {
                job: 1,
                stage: i,
                stage_attempt: 0,
                partition: 0,
                attempt: 0,
            },
            plan: plan.into(),
            in_process: None,
            config: Arc::new(config),
            session_id: "fuzz".into(),
        };
        let request = proto::LaunchTasksRequest {
            tasks: vec![task_definition_to_proto(&def)],
            ..Default::default()
        };
        out.push(request.encode_to_vec());
    }
    Ok(out)
}
