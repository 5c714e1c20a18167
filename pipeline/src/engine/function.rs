//! Row functions: a stage's per-row work as a DataFusion scalar function, so the same code
//! runs in this process and inside the executors of a cluster.
//!
//! A call passes every column of the rows it maps, then the call's settings as one JSON string
//! literal (so a plan carries everything an executor needs); the function answers one struct
//! per row. Settings are prepared once per process and distinct JSON (a tokenizer is loaded
//! once, not per batch).

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, StructArray};
use arrow::datatypes::{DataType, Fields, Schema};
use datafusion::common::{exec_err, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::error::{PipelineError, Result};

/// A stage's per-row work, run as a scalar function named [`RowFunction::NAME`].
pub trait RowFunction: Send + Sync + 'static {
    /// The function's SQL name (`medtune_<stage>`).
    const NAME: &'static str;
    /// What a call's settings are prepared into, once per process and settings.
    type Prepared: Send + Sync + 'static;
    /// The fields of the struct it answers per row.
    fn output_fields() -> Fields;
    /// Prepares the call's settings (parsed from the call's JSON).
    fn prepare(settings: &str) -> Result<Self::Prepared>;
    /// Maps `rows` (the columns the call passed, by name) to one struct per row.
    fn map(prepared: &Self::Prepared, rows: &RecordBatch) -> Result<StructArray>;
}

/// `F` as a DataFusion scalar function.
pub fn udf<F: RowFunction>() -> ScalarUDF {
    ScalarUDF::new_from_impl(RowUdf::<F> {
        signature: Signature::variadic_any(Volatility::Immutable),
        function: PhantomData,
    })
}

/// Every function's settings prepared in this process: function name, settings JSON, state.
type PreparedCache = Mutex<Vec<(&'static str, String, Arc<dyn Any + Send + Sync>)>>;

static PREPARED: PreparedCache = Mutex::new(Vec::new());

/// `F`'s `settings` prepared, once per process and settings: every call of the function and a
/// stage that checks the same settings before mapping (a tokenizer that loads, say) share it.
pub fn prepared<F: RowFunction>(settings: &str) -> Result<Arc<F::Prepared>> {
    let cached = |cache: &[(&str, String, Arc<dyn Any + Send + Sync>)]| {
        cache
            .iter()
            .find(|(name, json, _)| *name == F::NAME && json == settings)
            .and_then(|(_, _, state)| state.clone().downcast::<F::Prepared>().ok())
    };
    if let Some(state) = cached(&PREPARED.lock().expect("prepared settings lock")) {
        return Ok(state);
    }
    // Prepared outside the lock (loading a tokenizer takes a while); a race prepares twice and
    // keeps the first.
    let state = Arc::new(F::prepare(settings)?);
    let mut cache = PREPARED.lock().expect("prepared settings lock");
    if let Some(first) = cached(&cache) {
        return Ok(first);
    }
    cache.push((F::NAME, settings.to_string(), state.clone()));
    Ok(state)
}

struct RowUdf<F: RowFunction> {
    signature: Signature,
    function: PhantomData<fn() -> F>,
}

impl<F: RowFunction> fmt::Debug for RowUdf<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowUdf").field("name", &F::NAME).finish()
    }
}

impl<F: RowFunction> PartialEq for RowUdf<F> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<F: RowFunction> Eq for RowUdf<F> {}

impl<F: RowFunction> Hash for RowUdf<F> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        F::NAME.hash(state);
    }
}

fn external(e: PipelineError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl<F: RowFunction> ScalarUDFImpl for RowUdf<F> {
    fn name(&self) -> &str {
        F::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Struct(F::output_fields()))
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let Some((settings, columns)) = args.args.split_last() else {
            return exec_err!("{} takes the row's columns and a settings string", F::NAME);
        };
        let settings = match settings {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => s,
            _ => return exec_err!("{}: the last argument must be a settings string", F::NAME),
        };
        let prepared = prepared::<F>(settings).map_err(external)?;
        let arrays = columns
            .iter()
            .map(|c| c.to_array(rows))
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        let fields: Vec<_> = args.arg_fields[..columns.len()].to_vec();
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let out = F::map(&prepared, &batch).map_err(external)?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
