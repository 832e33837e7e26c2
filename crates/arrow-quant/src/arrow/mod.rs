//! Arrow interfaces: layers in from any Arrow table (`input`), quantized results out as record batches with the
//! documented result schema (`schema`, `output`) and a checksum per row (`checksum`), IPC files opened safely (`ipc_file`), and results read back (their
//! checksums verified) and dequantized (`result`).

mod buffers;
pub mod checksum;
pub mod input;
pub(crate) mod ipc_file;
pub mod output;
pub mod result;
pub mod schema;
pub mod time_groups;

pub use input::{read_layers, ArrowLayer};
pub use output::{quantize_to_batch, quantize_to_batches, tensor_batch, tensors_to_batch};
pub use result::{dequantize_to_batch, read_results, ResultRow};
pub use schema::result_schema;
