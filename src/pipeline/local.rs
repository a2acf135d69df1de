//! Running a prepared source in this process: one plan partition per core, the split on each
//! partition's task, and a [`SplitStream`] that restores the source's order.

use super::*;

impl Pipeline {
    /// The source's logical plan over a table with no rows (for `explain`).
    pub fn plan_without_data(&self, p: &PreparedSource) -> Result<(LogicalPlan, Layout)> {
        let table = Arc::new(EmptyTable::new(p.source.schema()));
        let scan = LogicalPlanBuilder::scan(p.source.name(), provider_as_source(table), None)?;
        crate::plan::build(scan, &p.source.data_schema(), &p.mapping, &p.validator)
    }

    /// Executes the source's plan over its data: a stream of (valid batch, invalid rows), in
    /// the source's order.
    ///
    /// The source's batches are dealt round-robin over one plan partition per core; each
    /// partition evaluates the mapping and the checks and splits its batches on its own task,
    /// and the stream takes the partitions' results in turn, which restores the input order
    /// (the plan maps batches one to one).
    pub async fn execute(&self, p: &PreparedSource) -> Result<SplitStream> {
        let n = self.partitions;
        let partitions: Vec<Arc<dyn PartitionStream>> = p
            .source
            .streams(n, 2)?
            .into_iter()
            .map(|s| Arc::new(OnceStream::new(s)) as Arc<dyn PartitionStream>)
            .collect();
        let table = StreamingTable::try_new(p.source.schema(), partitions)?;
        let scan =
            LogicalPlanBuilder::scan(p.source.name(), provider_as_source(Arc::new(table)), None)?;
        let (plan, layout) =
            crate::plan::build(scan, &p.source.data_schema(), &p.mapping, &p.validator)?;
        let physical = DataFrame::new(self.ctx.state(), plan)
            .create_physical_plan()
            .await?;
        let got = physical
            .properties()
            .output_partitioning()
            .partition_count();
        if got != n {
            // Round-robin order can only be restored if the plan kept the partitions as dealt.
            return Err(Error::Internal(format!(
                "the plan of source `{}` has {got} partitions, expected {n}",
                p.source.name()
            )));
        }
        let layout = Arc::new(layout);
        let checks = Arc::new(p.validator.checks.clone());
        let valid_schema = self.target.valid_arrow_schema();
        let task_ctx = self.ctx.task_ctx();
        let mut parts = Vec::with_capacity(n);
        for i in 0..n {
            let mut stream = physical.execute(i, Arc::clone(&task_ctx))?;
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let (layout, checks, valid_schema) = (
                Arc::clone(&layout),
                Arc::clone(&checks),
                Arc::clone(&valid_schema),
            );
            tokio::spawn(async move {
                while let Some(item) = stream.next().await {
                    let out = item
                        .map_err(unwrap_source_error)
                        .and_then(|b| split(&b, &layout, &checks, &valid_schema));
                    let failed = out.is_err();
                    if tx.send(out).await.is_err() || failed {
                        break;
                    }
                }
            });
            parts.push(rx);
        }
        Ok(SplitStream {
            parts,
            next: 0,
            done: false,
            valid_schema,
        })
    }
}

/// One split batch: the valid rows (target schema) and the invalid rows with their errors.
pub type SplitBatch = (RecordBatch, Vec<InvalidRow>);

/// A stream of split batches: valid rows (target schema) and invalid rows with errors, in the
/// source's order.
pub struct SplitStream {
    /// One receiver per plan partition; batch `k` of the source arrives on `parts[k % n]`.
    parts: Vec<tokio::sync::mpsc::Receiver<Result<SplitBatch>>>,
    next: usize,
    done: bool,
    valid_schema: SchemaRef,
}

impl futures::Stream for SplitStream {
    type Item = Result<SplitBatch>;

    /// The next split batch in the source's order; the stream ends after an error.
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.done || this.parts.is_empty() {
            return Poll::Ready(None);
        }
        let i = this.next % this.parts.len();
        match this.parts[i].poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                this.next += 1;
                this.done = item.is_err();
                Poll::Ready(Some(item))
            }
            // Batches are dealt in turn, so when partition `i` has nothing more, no later batch
            // exists in any partition.
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl SplitStream {
    /// Schema of the valid batches.
    pub fn valid_schema(&self) -> SchemaRef {
        Arc::clone(&self.valid_schema)
    }
}

/// A reader error travels through DataFusion wrapped; give the user the original message.
fn unwrap_source_error(e: datafusion::error::DataFusionError) -> Error {
    match e {
        datafusion::error::DataFusionError::External(inner) => match inner.downcast::<Error>() {
            Ok(err) => *err,
            Err(other) => Error::DataFusion(datafusion::error::DataFusionError::External(other)),
        },
        other => Error::DataFusion(other),
    }
}

/// A partition that hands out one pre-built stream (the source reader) once.
struct OnceStream {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl std::fmt::Debug for OnceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnceStream")
            .field("schema", &self.schema)
            .finish()
    }
}

impl OnceStream {
    fn new(stream: SendableRecordBatchStream) -> Self {
        OnceStream {
            schema: stream.schema(),
            stream: Mutex::new(Some(stream)),
        }
    }
}

impl PartitionStream for OnceStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        match self.stream.lock().expect("not poisoned").take() {
            Some(s) => s,
            None => {
                let err = datafusion::error::DataFusionError::Execution(
                    "a source stream can be read only once".into(),
                );
                Box::pin(
                    datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                        Arc::clone(&self.schema),
                        futures::stream::once(async move { Err(err) }),
                    ),
                )
            }
        }
    }
}
