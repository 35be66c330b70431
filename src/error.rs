//! The library's error type: each variant names the file, key or frame it is about and how to fix it.
//! The CLI turns these into one line and exit code 2.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {msg}")]
    Spec { path: PathBuf, msg: String },
    #[error("model {path}: {msg}")]
    Model { path: PathBuf, msg: String },
    #[error("model graph {graph}: {msg}")]
    Contract { graph: PathBuf, msg: String },
    #[error("{0}")]
    Runtime(String),
    #[error("source {source_name}: {msg}")]
    Source { source_name: String, msg: String },
    #[error("prompts {path}: {msg}")]
    Prompt { path: PathBuf, msg: String },
    /// A prompt that cannot be used on its reference frame: fatal, the run cannot follow the object.
    #[error("object {id} on frame {frame}: {msg}")]
    Object { id: u8, frame: u64, msg: String },
    #[error("frame {frame}: {msg}")]
    Frame { frame: String, msg: String },
    #[error("sink {path}: {msg}")]
    Sink { path: PathBuf, msg: String },
    #[error("onnx runtime: {0}")]
    Ort(String),
}

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Error::Ort(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
