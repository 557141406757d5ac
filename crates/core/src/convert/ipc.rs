//! Record batches as Arrow IPC stream bytes (task results crossing the network).

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use crate::error::Result;

/// One IPC stream holding `batches` (empty bytes for no batches).
pub fn batches_to_ipc(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    match batches.first() {
        Some(first) => ipc_stream(&first.schema(), batches),
        None => Ok(Vec::new()),
    }
}

/// One IPC stream of `schema` and `batches`, which may be none.
pub fn ipc_stream(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, schema)?;
    for b in batches {
        writer.write(b)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// The schema and batches of an IPC stream written by [`ipc_stream`] (in another
/// process: read with the checks of [`crate::ipc::read_stream`]); `what` names it in
/// errors.
pub fn read_ipc_stream(bytes: &[u8], what: &'static str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    crate::ipc::read_stream(bytes, what)
}

/// The batches of an IPC stream written by [`batches_to_ipc`].
pub fn batches_from_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    Ok(crate::ipc::read_stream(bytes, "task result (Arrow IPC)")?.1)
}
