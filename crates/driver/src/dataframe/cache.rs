//! `cache()`, `persist(level)` and `unpersist()`, as in Spark: lazy, kept on the
//! executors, read by later jobs (see `engine/cache.rs`).

use std::fmt;
use std::sync::Arc;

use datafusion::common::{DFSchemaRef, DataFusionError, Result as DFResult};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, LogicalPlanBuilder, UserDefinedLogicalNodeCore,
};
use datafusion::prelude::SessionContext;
use ember_core::{EmberError, Result};

use super::DataFrame;
use crate::engine::StorageLevel;

/// Marks a persisted frame in a logical plan: planned as a cache stage. Filters and
/// projections of the queries that read it stay above it, so that every query reads
/// the same kept partitions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) struct CacheNode {
    pub id: u64,
    pub level: StorageLevel,
    pub input: LogicalPlan,
}

impl UserDefinedLogicalNodeCore for CacheNode {
    fn name(&self) -> &str {
        "Cache"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    /// No filter is pushed below: the kept partitions are the whole frame.
    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        self.input
            .schema()
            .columns()
            .into_iter()
            .map(|c| c.flat_name())
            .chain(
                self.input
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone()),
            )
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Cache: id={}, level={}", self.id, self.level)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("Cache takes one input".into()))?;
        Ok(CacheNode {
            id: self.id,
            level: self.level,
            input,
        })
    }

    /// Limits are not pushed below either.
    fn supports_limit_pushdown(&self) -> bool {
        false
    }
}

impl DataFrame {
    /// Keeps this frame's partitions, once an action has computed them, on the
    /// executors that computed them, in memory and (what does not fit) on disk:
    /// later actions on the returned frame, and on frames built from it, read them
    /// instead of recomputing. Lazy, like Spark's: nothing runs now.
    pub fn cache(&self) -> Result<DataFrame> {
        self.persist(StorageLevel::MemoryAndDisk)
    }

    /// [`cache`](Self::cache) with a storage level.
    pub fn persist(&self, level: StorageLevel) -> Result<DataFrame> {
        if let LogicalPlan::Extension(e) = self.logical_plan()
            && let Some(node) = e.node.as_any().downcast_ref::<CacheNode>()
            && node.level == level
        {
            return Ok(self.clone());
        }
        if let Some(remote) = self.session.remote() {
            return self.persist_on_driver(remote, level);
        }
        let caches = self.session.caches().ok_or_else(|| {
            EmberError::Internal("a session with neither an engine nor a driver".into())
        })?;
        let id = self.session.next_cache_id();
        let name = self
            .description
            .as_deref()
            .map(str::to_string)
            .unwrap_or_else(|| self.logical_plan().display().to_string());
        caches.declare(id, name, level);
        let node = CacheNode {
            id,
            level,
            input: self.logical_plan().clone(),
        };
        let plan = LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        });
        let mut cached = self.with_plan(plan);
        cached.description = self.description.clone();
        Ok(cached)
    }

    /// Forgets this frame's kept partitions (on every executor) and returns the frame
    /// as it was before [`persist`](Self::persist): later actions compute it again.
    pub fn unpersist(&self) -> Result<DataFrame> {
        if let (Some(remote), LogicalPlan::TableScan(scan)) =
            (self.session.remote(), self.logical_plan())
            && let Some(source) = remote.unpersist(scan.table_name.table())
        {
            return Ok(self.with_plan(source));
        }
        let LogicalPlan::Extension(e) = self.logical_plan() else {
            return Ok(self.clone());
        };
        let Some(node) = e.node.as_any().downcast_ref::<CacheNode>() else {
            return Ok(self.clone());
        };
        self.session.uncache(node.id);
        Ok(self.with_plan(node.input.clone()))
    }
}

impl DataFrame {
    /// A client's `persist`: the driver persists the frame as a table of the client's
    /// session there (with the client's next request), and the frame returned reads
    /// that table.
    fn persist_on_driver(
        &self,
        remote: &crate::remote::RemoteDriver,
        level: StorageLevel,
    ) -> Result<DataFrame> {
        let ctx = self.session.context();
        let name = format!("ember_persisted_{}", self.session.next_cache_id());
        remote.persist(ctx, &name, self.logical_plan(), level)?;
        let table = crate::remote::CachedOnDriver {
            name: name.clone(),
            schema: Arc::new(self.df.schema().as_arrow().clone()),
        };
        let plan =
            LogicalPlanBuilder::scan(name, provider_as_source(Arc::new(table)), None)?.build()?;
        let mut cached = self.with_plan(plan);
        cached.description = self.description.clone();
        Ok(cached)
    }
}

/// `CACHE [LAZY] TABLE name [[AS] query]` or `UNCACHE TABLE [IF EXISTS] name`, which
/// DataFusion's parser does not know.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CacheStatement<'a> {
    /// The statement's text, for a driver to run it too.
    pub sql: &'a str,
    pub kind: CacheKind<'a>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CacheKind<'a> {
    Cache {
        name: &'a str,
        lazy: bool,
        query: Option<&'a str>,
    },
    Uncache {
        name: &'a str,
        if_exists: bool,
    },
}

impl<'a> CacheStatement<'a> {
    /// The statement `sql` is, if it is one of these.
    pub(crate) fn parse(sql: &'a str) -> Option<Result<CacheStatement<'a>>> {
        let sql = sql.trim().trim_end_matches(';').trim_end();
        let mut rest = sql;
        let mut word = || {
            let trimmed = rest.trim_start();
            let end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
            let (w, r) = trimmed.split_at(end);
            rest = r;
            w
        };
        let first = word();
        let is = |w: &str, k: &str| w.eq_ignore_ascii_case(k);
        if is(first, "CACHE") {
            let mut next = word();
            let lazy = is(next, "LAZY");
            if lazy {
                next = word();
            }
            if !is(next, "TABLE") {
                return Some(Err(usage()));
            }
            let name = word();
            if name.is_empty() {
                return Some(Err(usage()));
            }
            let mut query = rest.trim();
            if query.len() >= 3 && query[..3].eq_ignore_ascii_case("AS ") {
                query = query[3..].trim();
            }
            let query = (!query.is_empty()).then_some(query);
            return Some(Ok(CacheStatement {
                sql,
                kind: CacheKind::Cache { name, lazy, query },
            }));
        }
        if is(first, "UNCACHE") {
            if !is(word(), "TABLE") {
                return Some(Err(usage()));
            }
            let mut name = word();
            let if_exists = is(name, "IF");
            if if_exists {
                if !is(word(), "EXISTS") {
                    return Some(Err(usage()));
                }
                name = word();
            }
            if name.is_empty() || !rest.trim().is_empty() {
                return Some(Err(usage()));
            }
            return Some(Ok(CacheStatement {
                sql,
                kind: CacheKind::Uncache { name, if_exists },
            }));
        }
        None
    }
}

fn usage() -> EmberError {
    EmberError::Config(
        "expected CACHE [LAZY] TABLE name [AS query] or UNCACHE TABLE [IF EXISTS] name".into(),
    )
}

impl crate::Session {
    /// Runs a `CACHE TABLE` / `UNCACHE TABLE` statement. `CACHE TABLE t` keeps table
    /// t's rows (or, with `AS query`, the query's, as a new view t) on the executors and
    /// computes them now unless `LAZY`; `UNCACHE TABLE t` forgets them, t reading its
    /// source again.
    pub(crate) async fn cache_statement(&self, statement: CacheStatement<'_>) -> Result<()> {
        match self.remote() {
            // The driver caches in the client's session there; here `t` stands for
            // the cached table (its name and schema), which the driver reads.
            Some(remote) => {
                let ctx = self.context();
                remote.execute_sql(ctx, statement.sql).await?;
                match statement.kind {
                    CacheKind::Cache { name, query, .. } => {
                        let schema = match query {
                            Some(q) => self.sql_in(ctx, q).await?.schema().as_arrow().clone(),
                            None => ctx.table(name).await?.schema().as_arrow().clone(),
                        };
                        let table = crate::remote::CachedOnDriver {
                            name: name.to_string(),
                            schema: Arc::new(schema),
                        };
                        let previous = ctx.deregister_table(name)?;
                        ctx.register_table(name, Arc::new(table))?;
                        let previous = previous.filter(|_| query.is_none());
                        self.cached_tables()
                            .lock()
                            .insert(cached_key(ctx, name), (0, previous));
                    }
                    CacheKind::Uncache { name, .. } => {
                        if let Some((_, previous)) =
                            self.cached_tables().lock().remove(&cached_key(ctx, name))
                        {
                            ctx.deregister_table(name)?;
                            if let Some(provider) = previous {
                                ctx.register_table(name, provider)?;
                            }
                        }
                    }
                }
                Ok(())
            }
            None => self.cache_statement_in(self.context(), statement).await,
        }
    }

    /// Runs a cache statement in `ctx`: this session's context, or a client's on a
    /// driver.
    pub(crate) async fn cache_statement_in(
        &self,
        ctx: &SessionContext,
        statement: CacheStatement<'_>,
    ) -> Result<()> {
        match statement.kind {
            CacheKind::Cache { name, lazy, query } => {
                let source = match query {
                    Some(q) => self.sql_in(ctx, q).await?,
                    None => ctx.table(name).await?,
                };
                let cached = DataFrame::new(self.clone(), source).cache()?;
                let previous = match query {
                    Some(_) => None,
                    None => ctx.table_provider(name).await.ok(),
                };
                self.register_cached_table(ctx, name, &cached, previous)?;
                if !lazy {
                    cached.count().await?;
                }
                Ok(())
            }
            CacheKind::Uncache { name, if_exists } => {
                let entry = self.cached_tables().lock().remove(&cached_key(ctx, name));
                let Some((id, previous)) = entry else {
                    if if_exists {
                        return Ok(());
                    }
                    return Err(EmberError::Config(format!("table {name} is not cached")));
                };
                self.uncache(id);
                ctx.deregister_table(name)?;
                if let Some(provider) = previous {
                    ctx.register_table(name, provider)?;
                }
                Ok(())
            }
        }
    }

    /// Registers persisted frame `cached` as table `name` of `ctx` (in place of
    /// `previous`, which `UNCACHE TABLE` brings back).
    pub(crate) fn register_cached_table(
        &self,
        ctx: &SessionContext,
        name: &str,
        cached: &DataFrame,
        previous: Option<Arc<dyn datafusion::catalog::TableProvider>>,
    ) -> Result<()> {
        ctx.deregister_table(name)?;
        ctx.register_table(name, cached.df.clone().into_view())?;
        let id = cache_id(cached.logical_plan()).expect("a cached plan");
        self.cached_tables()
            .lock()
            .insert(cached_key(ctx, name), (id, previous));
        Ok(())
    }

    /// Whether table `name` of `ctx` is a cached one (`CACHE TABLE`).
    pub(crate) fn is_cached_table(&self, ctx: &SessionContext, name: &str) -> bool {
        self.cached_tables()
            .lock()
            .contains_key(&cached_key(ctx, name))
    }
}

/// Cached tables are kept by session (a driver holds its clients' too) and name.
fn cached_key(ctx: &SessionContext, name: &str) -> String {
    format!("{}/{name}", ctx.session_id())
}

/// The persisted frame a plan is (its top node), if any.
fn cache_id(plan: &LogicalPlan) -> Option<u64> {
    let LogicalPlan::Extension(e) = plan else {
        return None;
    };
    e.node.as_any().downcast_ref::<CacheNode>().map(|n| n.id)
}

#[cfg(test)]
mod tests {
    use super::{CacheKind, CacheStatement};

    #[test]
    fn cache_statements_parse() {
        let parse = |s| CacheStatement::parse(s).map(|r| r.unwrap().kind);
        assert_eq!(
            parse("cache table t"),
            Some(CacheKind::Cache {
                name: "t",
                lazy: false,
                query: None
            })
        );
        assert_eq!(
            parse("CACHE LAZY TABLE big AS SELECT * FROM t WHERE x > 1;"),
            Some(CacheKind::Cache {
                name: "big",
                lazy: true,
                query: Some("SELECT * FROM t WHERE x > 1")
            })
        );
        assert_eq!(
            parse("UNCACHE TABLE IF EXISTS t"),
            Some(CacheKind::Uncache {
                name: "t",
                if_exists: true
            })
        );
        assert_eq!(parse("SELECT 1"), None);
        assert!(CacheStatement::parse("CACHE t").unwrap().is_err());
        assert!(CacheStatement::parse("UNCACHE TABLE a b").unwrap().is_err());
    }
}
