//! Opening an Arrow IPC file that may be corrupt. The IPC reader allocates each block's stated length before
//! reading it, so a corrupt footer length would ask for terabytes and abort the process; every block is checked
//! against the file's size first.

use arrow_ipc::reader::FileReader;
use std::fs::File;

/// Opens an Arrow IPC file after checking that every block its footer lists lies inside the file.
pub(crate) fn open_ipc_file(file: File) -> Result<FileReader<File>, String> {
    check_blocks(&file)?;
    FileReader::try_new(file, None).map_err(|e| e.to_string())
}

/// Checks that every block the footer lists lies inside the file.
fn check_blocks(file: &File) -> std::result::Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len < 10 {
        return Err(format!("{len} bytes is too short for an Arrow IPC file"));
    }
    let mut tail = [0u8; 10];
    file.seek(SeekFrom::End(-10))
        .and_then(|_| file.read_exact(&mut tail))
        .map_err(|e| e.to_string())?;
    let footer_len = arrow_ipc::reader::read_footer_length(tail).map_err(|e| e.to_string())? as u64;
    if footer_len > len - 10 {
        return Err(format!("footer of {footer_len} bytes in a file of {len}"));
    }
    let mut footer = vec![0u8; footer_len as usize];
    file.seek(SeekFrom::Start(len - 10 - footer_len))
        .and_then(|_| file.read_exact(&mut footer))
        .map_err(|e| e.to_string())?;
    let footer = arrow_ipc::root_as_footer(&footer).map_err(|e| format!("bad footer: {e}"))?;
    let blocks = footer.recordBatches().into_iter().flatten();
    let dictionaries = footer.dictionaries().into_iter().flatten();
    for (i, block) in blocks.chain(dictionaries).enumerate() {
        let end = [
            block.offset(),
            i64::from(block.metaDataLength()),
            block.bodyLength(),
        ]
        .into_iter()
        .try_fold(0u64, |sum, part| sum.checked_add(u64::try_from(part).ok()?));
        if end.is_none_or(|end| end > len) {
            return Err(format!(
                "block {i} (offset {}, {} + {} bytes) lies outside the file of {len} bytes",
                block.offset(),
                block.metaDataLength(),
                block.bodyLength()
            ));
        }
    }
    Ok(())
}
