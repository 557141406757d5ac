//! Every `ember.*` key: its full name, its default and what it means. The defaults
//! live here and only here; `ember config` and the README print this table.

/// (full key, default, description).
pub(super) const KEYS: &[(&str, &str, &str)] = &[
    (
        "ember.task.max_failures",
        "4",
        "Attempts of one task before its job fails.",
    ),
    (
        "ember.stage.max_attempts",
        "4",
        "Attempts of one stage (after lost map outputs) before its job fails.",
    ),
    (
        "ember.shuffle.compression",
        "auto",
        "Compression of map outputs written to disk: auto (none for map stages when every executor is on one host, as in a single-machine cluster; LZ4 otherwise, for a job's final stage, which the driver reads, and for what a local session spills), lz4, zstd or none.",
    ),
    (
        "ember.shuffle.memory_budget",
        "2147483648",
        "Bytes of shuffle output a local session keeps in memory before writing map outputs to disk.",
    ),
    (
        "ember.shuffle.batch_rows",
        "16384",
        "Rows per shuffle batch: small batches are coalesced up to this size.",
    ),
    (
        "ember.executor.timeout",
        "30",
        "Seconds without a heartbeat after which an executor is considered lost.",
    ),
    (
        "ember.cluster.executor_wait",
        "30",
        "Seconds a job on a cluster driver waits for an executor to register before it fails.",
    ),
    (
        "ember.sql.max_expression_depth",
        "2000",
        "Deepest nesting of expressions in a SQL statement (1+1+...+1 nests one level per +); deeper statements are refused with an error.",
    ),
    (
        "ember.sql.scalar_subqueries_first",
        "true",
        "Uncorrelated scalar subqueries, such as x > (SELECT avg(y) FROM t), run first as jobs of their own and enter the query as literals, as in Spark: a filter on one then reaches the scans, Parquet pruning and the runtime filters. One that returns more than one row is an error. false leaves them to DataFusion, which joins them into the query.",
    ),
    (
        "ember.runtime_filter.enabled",
        "true",
        "Cross-stage runtime filters: a scan on the probe side of a join waits for the stage that computes the join's build side and skips the rows (and Parquet row groups) whose key no build row has.",
    ),
    (
        "ember.runtime_filter.min_probe_rows",
        "10000",
        "Fewest rows (from the table's statistics) a probe side's scan must have for a runtime filter that makes its stage wait for the build side: on a smaller scan the wait costs more than the filter saves, unless that stage, filtered, filters a bigger scan in turn. A scan in the join's own stage, which waits anyway, is always pruned. 0 filters every scan.",
    ),
    (
        "ember.adaptive.enabled",
        "true",
        "Adaptive execution: when a stage starts, its tasks are planned again from the sizes of the shuffle outputs it reads. Small reduce partitions are coalesced, a partitioned join whose build side turned out small becomes a broadcast join, and a join's skewed partitions are split.",
    ),
    (
        "ember.adaptive.advisory_partition_bytes",
        "67108864",
        "Shuffle bytes a reduce task of an adaptive stage aims at, when coalescing small partitions and splitting skewed ones.",
    ),
    (
        "ember.adaptive.broadcast_bytes",
        "10485760",
        "A partitioned join whose build side's shuffle output is at most this many bytes becomes a broadcast join when its stage starts (0 never).",
    ),
    (
        "ember.adaptive.skew_factor",
        "5",
        "A join's reduce partition is skewed when it is this many times the median partition of its side and over ember.adaptive.skew_bytes; its side's map outputs are then split between several tasks.",
    ),
    (
        "ember.adaptive.skew_bytes",
        "268435456",
        "The fewest bytes a skewed join partition has.",
    ),
    (
        "ember.streaming.state.partitions",
        "4",
        "Partitions of a keyed stateful streaming operator's state (aggregation, deduplication, stream-stream join). Recorded in the checkpoint when a query first starts; restarting it with another value is an error.",
    ),
    (
        "ember.streaming.state.snapshot_interval",
        "10",
        "Every how many batches a state partition is written whole (a snapshot) instead of as the batch's changes.",
    ),
    (
        "ember.rpc.keepalive_interval",
        "10",
        "Seconds between HTTP/2 keepalive pings on every gRPC connection (clients, driver, executors, shuffle fetches).",
    ),
    (
        "ember.rpc.keepalive_timeout",
        "20",
        "Seconds a keepalive ping may go unanswered before the peer counts as gone and its calls fail; a slow query is not cut off while its peer answers pings.",
    ),
    (
        "ember.rpc.connect_timeout",
        "10",
        "Seconds to establish a gRPC connection.",
    ),
    (
        "ember.rpc.request_timeout",
        "30",
        "Seconds a short control call (heartbeat, task status report, registration, task launch) may take; long calls (query results, shuffle fetches) have no deadline.",
    ),
    (
        "ember.eventlog.dir",
        "",
        "Directory where a driver writes each application's events as JSON lines, <dir>/<app-id>.jsonl (.inprogress until the session stops); `ember history --dir` serves their UI. Empty: no event log.",
    ),
    (
        "ember.s3.endpoint",
        "",
        "The S3 server of s3:// locations, such as http://127.0.0.1:9000 (empty: AWS_ENDPOINT, or Amazon's). Sent with every job, so the driver and the executors use it too.",
    ),
    (
        "ember.s3.region",
        "",
        "The region of s3:// locations (empty: AWS_REGION).",
    ),
    (
        "ember.s3.access_key_id",
        "",
        "The access key of s3:// locations (empty: AWS_ACCESS_KEY_ID).",
    ),
    (
        "ember.s3.secret_access_key",
        "",
        "The secret key of s3:// locations (empty: AWS_SECRET_ACCESS_KEY). Travels with every job to the driver and the executors, as the other settings do: give a cluster TLS when it must not cross a network in the clear.",
    ),
    (
        "ember.s3.allow_http",
        "",
        "true to reach an S3 endpoint over plain http:// (empty: AWS_ALLOW_HTTP).",
    ),
    (
        "ember.executor.memory",
        "0",
        "Local mode: the memory of the in-process executor, such as 8g; its task slots share a memory pool of 70% of it, and sorts, aggregations and joins spill to disk past their share. 0: half this machine's memory. (Executor processes take `ember executor --memory`.)",
    ),
    (
        "ember.test.delay_tasks",
        "",
        "Delay injection for tests: STAGE:MILLIS makes each task of stage STAGE wait that long before it runs; STAGE.PARTITION:MILLIS only that task.",
    ),
    (
        "ember.test.fail_tasks",
        "",
        "Failure injection for tests: STAGE:N fails the first N attempts of each task of stage STAGE; STAGE:always always fails.",
    ),
    (
        "ember.test.fail_reports",
        "",
        "Failure injection for tests: STAGE:N makes an executor's first N attempts to report each task of stage STAGE fail (it retries).",
    ),
    (
        "ember.test.forget_tasks",
        "",
        "Failure injection for tests: STAGE:N makes an executor drop the report of the first N attempts of each task of stage STAGE and forget the task.",
    ),
];
