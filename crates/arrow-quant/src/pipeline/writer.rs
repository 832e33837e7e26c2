//! The writer thread of a run: finished row batches go through a bounded channel to a thread that encodes and
//! writes them, so the next tensor is quantized while the previous one is written (at most two finished
//! batches in memory).

use super::model_file::ModelWriter;
use crate::error::Result;
use arrow_array::RecordBatch;
use std::sync::mpsc::SyncSender;

/// Runs `produce` with a sender of batches while a scoped thread writes them with `writer`. `produce` should
/// stop when a send fails (the writer failed). Returns the writer, ready to finish; a writer error comes
/// before a producer error, since it is why the producer stopped.
pub(crate) fn write_while<F>(mut writer: ModelWriter, produce: F) -> Result<ModelWriter>
where
    F: FnOnce(&SyncSender<RecordBatch>) -> Result<()>,
{
    let (to_writer, batches) = std::sync::mpsc::sync_channel::<RecordBatch>(1);
    std::thread::scope(|scope| {
        let writing = scope.spawn(move || -> Result<ModelWriter> {
            for batch in batches {
                writer.write(&batch)?;
            }
            Ok(writer)
        });
        let produced = produce(&to_writer);
        drop(to_writer);
        let written = writing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let writer = written?;
        produced.map(|()| writer)
    })
}
