//! The client side of a Ballista cluster: sessions whose plans run there, and the logical codec
//! that carries medtune's chunk tables inside those plans (the scheduler and the executors use
//! the same codec, see the `medtune-cluster` crate).

use std::sync::Arc;

use ballista::prelude::SessionContextExt;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::BallistaLogicalExtensionCodec;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::datasource::TableProvider;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;

use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use super::chunk::{part_schema, Chunk, ChunkTable};
use super::write::{ChunkJob, RowStages, WriteChunkExec, WriteChunkTable};
use crate::error::{PipelineError, Result};

/// Checks a `df://HOST:PORT` scheduler address and splits it into host and port.
pub fn scheduler_address(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| {
        PipelineError::Usage(format!(
            "--cluster {url}: {why}; expected df://HOST:PORT (the address `medtune scheduler` prints)"
        ))
    };
    let rest = url
        .strip_prefix("df://")
        .ok_or_else(|| bad("no df:// scheme"))?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port = port
        .trim_end_matches('/')
        .parse::<u16>()
        .map_err(|_| bad("bad port"))?;
    if host.is_empty() || port == 0 {
        return Err(bad("no host or port 0"));
    }
    Ok((host.to_string(), port))
}

/// A session whose plans run on the cluster at `url` (`df://HOST:PORT`), with `config`
/// (Ballista's own defaults added) and medtune's logical codec.
pub async fn remote_session(url: &str, config: SessionConfig) -> Result<SessionContext> {
    scheduler_address(url)?;
    let partitions = config.target_partitions();
    let config = config
        .upgrade_for_ballista()
        .with_target_partitions(partitions)
        .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()));
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    SessionContext::remote_with_state(url, state)
        .await
        .map_err(|e| PipelineError::Engine(format!("connecting to the cluster at {url}: {e}")))
}

/// What starts an encoded [`ChunkTable`], so the codec tells it from other tables.
const CHUNK_TABLE_TAG: &[u8] = b"medtune.chunk.v1:";

/// What starts an encoded chunk job ([`WriteChunkTable`], [`WriteChunkExec`]).
const CHUNK_JOB_TAG: &[u8] = b"medtune.chunk-job.v1:";

fn codec_error(what: &str, e: impl std::fmt::Display) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::Internal(format!("{what}: {e}"))
}

fn encode_job(job: &ChunkJob, buf: &mut Vec<u8>) -> datafusion::error::Result<()> {
    buf.extend_from_slice(CHUNK_JOB_TAG);
    serde_json::to_writer(&mut *buf, job).map_err(|e| codec_error("encoding a chunk job", e))
}

/// The job in `buf` (after its tag) and the stage it names, which this process must know.
fn decode_job(
    json: &[u8],
    stages: &RowStages,
) -> datafusion::error::Result<(ChunkJob, Arc<dyn super::write::AnyRowStage>)> {
    let job: ChunkJob =
        serde_json::from_slice(json).map_err(|e| codec_error("decoding a chunk job", e))?;
    let stage = stages.find(&job.stage).ok_or_else(|| {
        codec_error(
            "decoding a chunk job",
            format!(
                "this process knows no row stage `{}` (a medtune of another version?)",
                job.stage
            ),
        )
    })?;
    Ok((job, stage))
}

/// Ballista's logical codec, plus medtune's [`ChunkTable`] and [`WriteChunkTable`] (encoded as
/// tagged JSON). Decoding a chunk job needs the row stages it may name.
#[derive(Debug, Default)]
pub struct LogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
    stages: RowStages,
}

impl LogicalCodec {
    /// A codec that decodes chunk jobs of `stages`.
    pub fn new(stages: RowStages) -> Self {
        LogicalCodec {
            ballista: BallistaLogicalExtensionCodec::default(),
            stages,
        }
    }
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> datafusion::error::Result<Extension> {
        self.ballista.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> datafusion::error::Result<()> {
        self.ballista.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        if let Some(json) = buf.strip_prefix(CHUNK_JOB_TAG) {
            let (job, stage) = decode_job(json, &self.stages)?;
            let input_schema =
                part_schema(&job.chunk.path).map_err(|e| codec_error("decoding a chunk job", e))?;
            return Ok(Arc::new(WriteChunkTable {
                job,
                stage,
                input_schema,
            }));
        }
        match buf.strip_prefix(CHUNK_TABLE_TAG) {
            Some(json) => {
                let chunk: Chunk = serde_json::from_slice(json).map_err(|e| {
                    datafusion::error::DataFusionError::Internal(format!(
                        "decoding a medtune chunk table: {e}"
                    ))
                })?;
                Ok(Arc::new(ChunkTable { chunk, schema }))
            }
            None => self
                .ballista
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> datafusion::error::Result<()> {
        if let Some(table) = node.downcast_ref::<WriteChunkTable>() {
            return encode_job(&table.job, buf);
        }
        match node.downcast_ref::<ChunkTable>() {
            Some(table) => {
                buf.extend_from_slice(CHUNK_TABLE_TAG);
                serde_json::to_writer(&mut *buf, &table.chunk).map_err(|e| {
                    datafusion::error::DataFusionError::Internal(format!(
                        "encoding a medtune chunk table: {e}"
                    ))
                })
            }
            None => self
                .ballista
                .try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> datafusion::error::Result<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>>
    {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> datafusion::error::Result<()> {
        self.ballista.try_encode_file_format(buf, node)
    }
}

/// Ballista's physical codec, plus medtune's [`WriteChunkExec`] (its job as tagged JSON, its
/// input encoded by Ballista's). Decoding one needs the row stages it may name.
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    ballista: ballista_core::serde::BallistaPhysicalExtensionCodec,
    stages: RowStages,
}

impl PhysicalCodec {
    /// A codec that decodes chunk jobs of `stages`.
    pub fn new(stages: RowStages) -> Self {
        PhysicalCodec {
            ballista: Default::default(),
            stages,
        }
    }
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let Some(json) = buf.strip_prefix(CHUNK_JOB_TAG) else {
            return self.ballista.try_decode(buf, inputs, ctx, proto_converter);
        };
        let (job, stage) = decode_job(json, &self.stages)?;
        let [input] = inputs else {
            return Err(codec_error("decoding a chunk job", "it takes one input"));
        };
        Ok(Arc::new(WriteChunkExec::new(job, stage, input.clone())))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> datafusion::error::Result<()> {
        match node.downcast_ref::<WriteChunkExec>() {
            Some(exec) => encode_job(exec.job(), buf),
            None => self.ballista.try_encode(node, buf, proto_converter),
        }
    }
}
