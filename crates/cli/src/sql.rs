//! `ember sql`: run SQL given with `-e` or `-f`, or typed into the shell.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::logical_expr::LogicalPlan;
use ember_driver::{Session, tpch};

use crate::output::{Format, ResultWriter, one_line, summary, write_result};
use crate::progress::ProgressBar;
use crate::statements::split_script;
use crate::{shell, tables};
use futures::StreamExt;

#[derive(Debug, clap::Args)]
pub struct SqlArgs {
    /// Where jobs run: local, local[N] (N executor slots), local[*] (one per core), or
    /// ember://HOST:PORT (a cluster's driver, `ember driver`).
    #[arg(long, default_value = "local[*]")]
    pub master: String,

    /// For ember://: the cluster's secret and TLS.
    #[command(flatten)]
    pub security: crate::security::SecurityArgs,

    #[command(flatten)]
    pub ui: crate::ui_args::UiArgs,

    /// Run these statements (`;`-separated; repeatable), then exit.
    #[arg(short = 'e', long = "execute", value_name = "SQL")]
    pub execute: Vec<String>,

    /// Run the statements of this file (repeatable, in order with -e), then exit.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// How results are printed. csv and json print only the data on stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Register a table: a .parquet, .csv (with header), .json or .ndjson file, or a
    /// directory of them (repeatable).
    #[arg(long = "table", value_name = "NAME=PATH", value_parser = tables::parse_table_arg)]
    pub tables: Vec<(String, String)>,

    /// Register the 8 TPC-H tables of a directory written by `ember gen tpch`.
    #[arg(long, value_name = "DIR")]
    pub tpch: Option<PathBuf>,

    /// Set a configuration key, `ember.*` or `datafusion.*` (repeatable; see
    /// `ember config`).
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE", value_parser = parse_config_arg)]
    pub config: Vec<(String, String)>,

    /// The -e and -f scripts in command-line order (see [`SqlArgs::order_scripts`]).
    #[arg(skip)]
    pub scripts: Vec<Script>,
}

/// One -e or -f argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    Sql(String),
    File(PathBuf),
}

impl SqlArgs {
    /// Records the order in which -e and -f were given, which clap's derived fields
    /// lose, so that `-e "CREATE ..." -f query.sql` runs the CREATE first.
    pub fn order_scripts(&mut self, matches: &clap::ArgMatches) {
        let indices = |id: &str| -> Vec<usize> {
            matches
                .indices_of(id)
                .map(|i| i.collect())
                .unwrap_or_default()
        };
        let mut scripts: Vec<(usize, Script)> = indices("execute")
            .into_iter()
            .zip(self.execute.iter().cloned().map(Script::Sql))
            .chain(
                indices("files")
                    .into_iter()
                    .zip(self.files.iter().cloned().map(Script::File)),
            )
            .collect();
        scripts.sort_by_key(|(index, _)| *index);
        self.scripts = scripts.into_iter().map(|(_, script)| script).collect();
    }
}

pub(crate) fn parse_config_arg(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{arg}'")),
    }
}

/// Runs `ember sql`; the session's jobs run on `engine`.
pub async fn run(args: SqlArgs, engine: &tokio::runtime::Handle) -> Result<ExitCode> {
    let mut builder = args.ui.apply(
        Session::builder()
            .master(&args.master)
            .security(args.security.security()?),
    );
    for (key, value) in &args.config {
        builder = builder.config(key, value);
    }
    let session = {
        let _engine = engine.enter();
        builder.build()?
    };
    if let Some(dir) = &args.tpch {
        tpch::register_tables(session.context(), dir).await?;
    }
    for (name, path) in &args.tables {
        tables::register(session.context(), name, path).await?;
    }
    let runner = Runner {
        session,
        format: args.format,
    };
    if args.execute.is_empty() && args.files.is_empty() {
        return shell::run(&runner).await;
    }
    let scripts = if args.scripts.is_empty() {
        // Not ordered by the caller: files first.
        let files = args.files.iter().cloned().map(Script::File);
        files
            .chain(args.execute.iter().cloned().map(Script::Sql))
            .collect()
    } else {
        args.scripts.clone()
    };
    let mut statements = Vec::new();
    for script in scripts {
        match script {
            Script::Sql(sql) => statements.extend(split_script(&sql)),
            Script::File(file) => {
                let text = tokio::fs::read_to_string(&file)
                    .await
                    .with_context(|| format!("reading {}", file.display()))?;
                statements.extend(split_script(&text));
            }
        }
    }
    for statement in statements {
        match runner.run(&statement).await {
            Ok(Outcome::Continue) => {}
            Ok(Outcome::Quit) => break,
            Err(e) => {
                eprintln!("Error: {}", one_line(&e));
                return Ok(exit_code(&e));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code for a failed statement: 130 (as for SIGINT) when cancelled.
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.is::<Cancelled>() {
        ExitCode::from(130)
    } else {
        ExitCode::FAILURE
    }
}

/// A statement stopped by Ctrl-C.
#[derive(Debug)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("query cancelled (Ctrl-C)")
    }
}

impl std::error::Error for Cancelled {}

/// What the shell does after a statement.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    Quit,
}

const HELP: &str = "\
Statements end with ';' and may span lines. Ctrl-C cancels a running query or clears
the line; Ctrl-D exits.

  SELECT ... / CREATE EXTERNAL TABLE ... / EXPLAIN ... / SET ...   run SQL
  \\stages QUERY;   the stage DAG ember runs for QUERY
  \\analyze QUERY;  runs QUERY, then shows its stage DAG as planned and as run
  \\d               list tables
  \\d NAME          describe table NAME
  \\q               quit
  \\?               this help";

/// Runs statements against one session and prints their results.
pub struct Runner {
    pub session: Session,
    pub format: Format,
}

impl Runner {
    /// Runs one statement or shell command and prints its result. Ctrl-C drops the
    /// running query, which cancels its job.
    pub async fn run(&self, statement: &str) -> Result<Outcome> {
        tokio::select! {
            outcome = self.execute(statement) => outcome,
            _ = tokio::signal::ctrl_c() => Err(Cancelled.into()),
        }
    }

    async fn execute(&self, statement: &str) -> Result<Outcome> {
        if let Some(command) = statement.strip_prefix('\\') {
            return self.command(command).await;
        }
        self.query(statement).await?;
        Ok(Outcome::Continue)
    }

    async fn query(&self, sql: &str) -> Result<()> {
        let start = Instant::now();
        let df = self.session.sql(sql).await?;
        let schema = df.schema();
        // The bars show until the first rows arrive; rows print as they come.
        let mut bar = Some(ProgressBar::start(&self.session));
        let mut rows = df.execute_stream().await?;
        let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        let mut writer = ResultWriter::new(out, self.format, schema)?;
        while let Some(batch) = rows.next().await {
            let batch = batch.map_err(ember_driver::EmberError::from)?;
            bar.take();
            writer.write(&batch)?;
        }
        drop(bar);
        let rows = writer.finish()?;
        if self.format == Format::Table {
            println!("{}", summary(rows, start.elapsed()));
        }
        Ok(())
    }

    async fn command(&self, command: &str) -> Result<Outcome> {
        let (name, arg) = command
            .split_once(char::is_whitespace)
            .map_or((command, ""), |(n, a)| (n, a.trim()));
        match name {
            "q" | "quit" => return Ok(Outcome::Quit),
            "?" | "h" | "help" => println!("{HELP}"),
            "d" if arg.is_empty() => self.list_tables()?,
            "d" => self.query(&format!("DESCRIBE {arg}")).await?,
            "stages" => {
                let plan = self.plan_of(name, arg).await?;
                let stages = self.session.explain_stages(&plan).await?;
                println!("{}", stages.trim_end());
            }
            "analyze" => {
                let plan = self.plan_of(name, arg).await?;
                let stages = self.session.explain_stages(&plan).await?;
                let adapted = self.session.run_for_adaptive_plans(&plan).await?;
                println!("== Stage DAG ==\n{}", stages.trim_end());
                println!("== Stage DAG (as run) ==");
                if adapted.is_empty() {
                    println!("every stage ran as planned");
                }
                for stage in adapted {
                    print!("{stage}");
                }
            }
            _ => anyhow::bail!("unknown command \\{name}; \\? lists the commands"),
        }
        Ok(Outcome::Continue)
    }

    /// The logical plan of the query after shell command `\\command`.
    async fn plan_of(&self, command: &str, query: &str) -> Result<LogicalPlan> {
        anyhow::ensure!(
            !query.is_empty(),
            "\\{command} needs a query: \\{command} SELECT ...;"
        );
        let state = self.session.context().state();
        Ok(state.create_logical_plan(query).await?)
    }

    /// `\d`: the tables of every schema, from the catalog (no job runs).
    fn list_tables(&self) -> Result<()> {
        let ctx = self.session.context();
        let mut names = Vec::new();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                if schema_name == "information_schema" {
                    continue;
                }
                if let Some(schema) = catalog.schema(&schema_name) {
                    names.extend(schema.table_names());
                }
            }
        }
        names.sort();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "table_name",
            DataType::Utf8,
            false,
        )]));
        let rows = names.len();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from_iter_values(names))],
        )?;
        let mut out = std::io::stdout().lock();
        write_result(&mut out, self.format, &schema, &[batch])?;
        if self.format == Format::Table {
            writeln!(out, "{rows} tables")?;
        }
        Ok(())
    }
}
