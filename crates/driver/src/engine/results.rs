//! The result reader: streams a job's rows to its caller as the final stage's tasks
//! store them.
//!
//! A final-stage task keeps its output on its executor, like map output (memory or
//! one file), and reports where. The reader fetches the partitions in order, each
//! once its task is done, through the shuffle's reader (`FetchPartition` from
//! executor processes, in bounded chunks), and hands the batches on as they arrive:
//! the driver holds a few batches at a time, never a whole result, and the first rows
//! reach the caller while later tasks still run. A partition that cannot be fetched
//! (its executor is gone) is recomputed from lineage; the rows of it already handed
//! on are skipped when it is read again. The job ends when every partition has been
//! read; dropping the stream cancels it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::{ExecutionPlan, Partitioning, SendableRecordBatchStream};
use datafusion::prelude::SessionConfig;
use ember_core::EmberError;
use ember_core::task::find_ember_error;
use ember_exec::shuffle::{MapOutput, ShuffleEnv, ShuffleReaderExec};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::job::{ResultEvent, location};
use super::scheduler::Event;
use crate::events::records::JobRecords;

/// Times one result partition may be lost and recomputed before the job fails.
const MAX_RESULT_LOSSES: usize = 4;

/// One job's result, as the reader sees it.
pub(super) struct ResultReader {
    pub job: u64,
    pub stage: usize,
    pub partitions: usize,
    pub schema: SchemaRef,
    /// Where fetches come from: the local executors' shuffle in local mode, a
    /// fetch-only environment (with the cluster's security) on a driver.
    pub shuffle: Arc<ShuffleEnv>,
    pub results: mpsc::UnboundedReceiver<ResultEvent>,
    pub events: mpsc::UnboundedSender<Event>,
    pub jobs: Arc<JobRecords>,
}

impl ResultReader {
    /// The rows, in partition order, as a stream; dropping it cancels the job.
    pub(super) fn stream(self) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStream::builder(self.schema.clone(), 2);
        let tx = builder.tx();
        builder.spawn(async move {
            let mut guard = CancelOnDrop {
                events: self.events.clone(),
                jobs: self.jobs.clone(),
                job: self.job,
                armed: true,
            };
            self.read_all(&tx).await?;
            guard.armed = false;
            Ok(())
        });
        builder.build()
    }

    async fn read_all(mut self, tx: &mpsc::Sender<DFResult<RecordBatch>>) -> DFResult<()> {
        let ctx = Arc::new(
            TaskContext::default()
                .with_session_config(SessionConfig::new().with_extension(self.shuffle.clone())),
        );
        let mut ready: BTreeMap<usize, MapOutput> = BTreeMap::new();
        let mut partition = 0;
        while partition < self.partitions {
            // Rows of this partition already handed on, and times it was lost.
            let (mut sent, mut losses) = (0usize, 0usize);
            loop {
                let Some(output) = self.wait_for(partition, &mut ready).await? else {
                    break;
                };
                match self
                    .read_partition(partition, &output, &ctx, &mut sent, tx)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return Ok(()), // the caller went away
                    Err(e) => {
                        let Some(EmberError::FetchFailed { message, .. }) = find_ember_error(&e)
                        else {
                            return Err(e);
                        };
                        losses += 1;
                        if losses > MAX_RESULT_LOSSES {
                            return Err(e);
                        }
                        ready.remove(&partition);
                        let _ = self.events.send(Event::ResultLost {
                            job: self.job,
                            partition,
                            executor: output.executor_id.clone(),
                            message: message.clone(),
                        });
                        continue;
                    }
                }
                let _ = self.events.send(Event::ResultFetched {
                    job: self.job,
                    partition,
                });
                break;
            }
            partition += 1;
        }
        let (ended, ack) = tokio::sync::oneshot::channel();
        let _ = self.events.send(Event::ResultsRead {
            job: self.job,
            ended,
        });
        let _ = ack.await;
        Ok(())
    }

    /// Waits until final-stage partition `partition` is stored (keeping the
    /// announcements of the others); `None` when the final stage runs as fewer tasks.
    async fn wait_for(
        &mut self,
        partition: usize,
        ready: &mut BTreeMap<usize, MapOutput>,
    ) -> DFResult<Option<MapOutput>> {
        loop {
            if partition >= self.partitions {
                return Ok(None);
            }
            if let Some(output) = ready.get(&partition) {
                return Ok(Some(output.clone()));
            }
            match self.results.recv().await {
                Some(ResultEvent::Partitions(n)) => self.partitions = n,
                Some(ResultEvent::Ready { partition, output }) => {
                    ready.insert(partition, output);
                }
                Some(ResultEvent::Failed(e)) => {
                    return Err(DataFusionError::External(Box::new(e)));
                }
                None => {
                    return Err(DataFusionError::External(Box::new(EmberError::Internal(
                        format!("the scheduler dropped job {}", self.job),
                    ))));
                }
            }
        }
    }

    /// Reads one stored partition and sends its rows past the first `sent` (counted
    /// on). False when the caller has gone away.
    async fn read_partition(
        &self,
        partition: usize,
        output: &MapOutput,
        ctx: &Arc<TaskContext>,
        sent: &mut usize,
        tx: &mpsc::Sender<DFResult<RecordBatch>>,
    ) -> DFResult<bool> {
        let reader = ShuffleReaderExec::new(
            self.stage,
            Partitioning::UnknownPartitioning(1),
            vec![vec![location(partition, output, 0)]],
            EquivalenceProperties::new(self.schema.clone()),
        );
        let mut stream = reader.execute(0, ctx.clone())?;
        let mut seen = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let rows = batch.num_rows();
            // Rows handed on before the partition was lost are not sent twice.
            let skip = sent.saturating_sub(seen).min(rows);
            seen += rows;
            if skip == rows {
                continue;
            }
            let batch = if skip > 0 {
                batch.slice(skip, rows - skip)
            } else {
                batch
            };
            *sent += batch.num_rows();
            if tx.send(Ok(batch)).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Sends `Cancel` if the reader stops before every partition was read (its stream
/// was dropped, or it failed).
struct CancelOnDrop {
    events: mpsc::UnboundedSender<Event>,
    jobs: Arc<JobRecords>,
    job: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.events.send(Event::Cancel { job: self.job });
            self.jobs.cancel_if_running(self.job);
        }
    }
}
