//! Checks on an output path before a run writes anything: it must not be one of the run's inputs (by any name:
//! `./` variants, a symlink, a hard link), it must be a place a file can appear (not an existing folder, its
//! folder must exist), and its extension must not contradict the format written.

use super::config::OutputFormat;
use crate::error::{QuantError, Result};
use std::path::Path;

/// True when `a` and `b` name the same existing file: the same canonical path, or (on Unix) the same device
/// and inode, which also catches hard links.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(meta_a), Ok(meta_b)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (meta_a.dev(), meta_a.ino()) == (meta_b.dev(), meta_b.ino()) {
            return true;
        }
    }
    #[cfg(not(unix))]
    let _ = (meta_a, meta_b);
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Refuses `output` when it is the same file as one of `inputs` (what each input is, e.g. "the checkpoint
/// shard", goes into the message), or when it cannot become a file: an existing folder, or a missing folder.
pub fn check_output(output: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    for (what, input) in inputs {
        if same_file(output, input) {
            return Err(QuantError::output_path(
                output,
                format!(
                    "is the same file as {what} {} (by path or link); writing it would destroy the input, \
                     choose another output path",
                    input.display()
                ),
            ));
        }
    }
    check_target(output)
}

/// The target must be able to become a file: not an existing folder, inside an existing folder.
pub(crate) fn check_target(target: &Path) -> Result<()> {
    let io = |kind: std::io::ErrorKind, message: &str| {
        QuantError::io(target, &std::io::Error::new(kind, message.to_string()))
    };
    if target.is_dir() {
        return Err(io(
            std::io::ErrorKind::IsADirectory,
            "Is a directory; name a file inside it",
        ));
    }
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io(
            std::io::ErrorKind::NotADirectory,
            "the output folder is not a folder",
        )),
        Err(_) => Err(io(
            std::io::ErrorKind::NotFound,
            "the output folder does not exist",
        )),
    }
}

/// The format a model file at `output` is written in: `explicit` if given, else the one its extension names
/// (`.parquet` / `.pq`, `.arrow` / `.ipc` / `.feather`, `.gguf`), else Parquet. An extension that names another format
/// (a given format that disagrees, Arrow IPC streams `.arrows`, `.safetensors`) is an error.
pub fn model_format(output: &Path, explicit: Option<OutputFormat>) -> Result<OutputFormat> {
    let ext = output
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let implied = match ext.as_deref() {
        Some("parquet" | "pq") => Some(OutputFormat::Parquet),
        Some("arrow" | "ipc" | "feather") => Some(OutputFormat::ArrowIpc),
        Some("gguf") => Some(OutputFormat::Gguf),
        Some("arrows") => {
            return Err(QuantError::output_path(
                output,
                "names an Arrow IPC stream (.arrows), which is not written; name the output .arrow \
                 (Arrow IPC file) or .parquet",
            ))
        }
        Some("safetensors") => {
            return Err(QuantError::output_path(
                output,
                "a model file is Parquet, Arrow IPC or GGUF, not .safetensors; name the output .parquet, \
                 .arrow or .gguf (export writes .safetensors)",
            ))
        }
        _ => None,
    };
    match (explicit, implied) {
        (Some(e), Some(i)) if e != i => Err(QuantError::output_path(
            output,
            format!(
                "format \"{}\" contradicts the extension .{} ({}); drop the format or name the output .{}",
                e.name(),
                ext.as_deref().unwrap_or_default(),
                i.name(),
                e.extension()
            ),
        )),
        (Some(e), _) => Ok(e),
        (None, Some(i)) => Ok(i),
        (None, None) => Ok(OutputFormat::Parquet),
    }
}

/// An export target must not be named like a model file (`.parquet`, `.arrow`): export writes `.safetensors`.
pub fn check_export_extension(output: &Path) -> Result<()> {
    let ext = output
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some(e @ ("parquet" | "pq" | "arrow" | "arrows" | "ipc" | "feather" | "gguf")) => {
            Err(QuantError::output_path(
                output,
                format!("export writes .safetensors, not .{e}; name the output .safetensors"),
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("aq-outpath-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn every_name_of_the_input_is_refused() {
        let d = dir("same");
        let input = d.join("m.safetensors");
        std::fs::write(&input, b"x").unwrap();
        let hard = d.join("hard.bin");
        std::fs::hard_link(&input, &hard).unwrap();
        let dotted = d.join(".").join("sub").join("..").join("m.safetensors");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let mut names = vec![input.clone(), hard, dotted];
        #[cfg(unix)]
        {
            let link = d.join("link.parquet");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            names.push(link);
        }
        for name in &names {
            let e = check_output(name, &[("the checkpoint", &input)]).unwrap_err();
            assert!(
                matches!(e, QuantError::OutputPath { .. }) && e.to_string().contains("same file"),
                "{name:?}: {e}"
            );
        }
        assert!(check_output(&d.join("other.parquet"), &[("the checkpoint", &input)]).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_folder_or_a_missing_folder_is_refused_by_the_user_path() {
        let d = dir("target");
        let e = check_target(&d).unwrap_err();
        assert!(matches!(
            e,
            QuantError::Io {
                kind: std::io::ErrorKind::IsADirectory,
                ..
            }
        ));
        assert!(e.to_string().starts_with(&d.display().to_string()));
        let file = d.join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = check_target(&file.join("o.parquet")).unwrap_err();
        assert!(matches!(
            e,
            QuantError::Io {
                kind: std::io::ErrorKind::NotADirectory,
                ..
            }
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_extension_gives_the_format_and_a_contradiction_is_refused() {
        let p = Path::new;
        assert_eq!(
            model_format(p("x.arrow"), None).unwrap(),
            OutputFormat::ArrowIpc
        );
        assert_eq!(
            model_format(p("x.PQ"), None).unwrap(),
            OutputFormat::Parquet
        );
        assert_eq!(model_format(p("x"), None).unwrap(), OutputFormat::Parquet);
        assert_eq!(
            model_format(p("m-Q4_K_M.GGUF"), None).unwrap(),
            OutputFormat::Gguf
        );
        assert_eq!(
            model_format(p("x.bin"), Some(OutputFormat::ArrowIpc)).unwrap(),
            OutputFormat::ArrowIpc
        );
        for (path, explicit) in [
            ("x.ipc", Some(OutputFormat::Parquet)),
            ("x.parquet", Some(OutputFormat::ArrowIpc)),
            ("x.arrows", None),
            ("x.safetensors", None),
            ("x.gguf", Some(OutputFormat::Parquet)),
        ] {
            let e = model_format(p(path), explicit).unwrap_err();
            assert!(matches!(e, QuantError::OutputPath { .. }), "{path}: {e}");
        }
        assert!(check_export_extension(p("x.feather")).is_err());
        assert!(check_export_extension(p("x.gguf")).is_err());
        assert!(check_export_extension(p("x.safetensors")).is_ok());
    }
}
