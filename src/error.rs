//! The library's error type: each variant names the file, key or frame it is about and how to fix it.
//! The CLI turns these into one line and exit code 2.

use std::path::PathBuf;

/// Everything a run can fail with; `Display` gives the one line the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline spec is wrong: the file cannot be read or parsed, an override or key is invalid,
    /// or the keys ask for something that cannot run.
    #[error("{path}: {msg}")]
    Spec {
        /// The pipeline file, or the key the message is about (e.g. `source.shard`, `job.kind`).
        path: PathBuf,
        /// What is wrong and how to fix it.
        msg: String,
    },
    /// The model folder is wrong: `model.yaml` cannot be read, parsed or fails its checks, or a
    /// file of the model cannot be read.
    #[error("model {path}: {msg}")]
    Model {
        /// The `model.yaml`, or the model file that cannot be read.
        path: PathBuf,
        /// What is wrong and how to fix it.
        msg: String,
    },
    /// An ONNX graph does not match what `model.yaml` declares (tensor names, types, shapes), is
    /// missing, empty or cannot be loaded, or fails when run.
    #[error("model graph {graph}: {msg}")]
    Contract {
        /// The graph's `.onnx` file.
        graph: PathBuf,
        /// What is wrong and how to fix it.
        msg: String,
    },
    /// The run itself failed: the ONNX Runtime library or the CUDA device cannot be used, a stage
    /// panicked or stopped, too many frames failed in a row (`runtime.max_consecutive_failures`), or
    /// metrics cannot be served.
    #[error("{0}")]
    Runtime(String),
    /// The source cannot be opened or read: no `video`, `frames` or `images` given, no images found,
    /// a video that cannot be opened or decoded.
    #[error("source {source_name}: {msg}")]
    Source {
        /// The video file, frames folder or image pattern, as given in the spec.
        source_name: String,
        /// What is wrong and how to fix it.
        msg: String,
    },
    /// A prompt, mask, bank or exemplar file cannot be read or used, or a prompted object cannot be
    /// followed (its reference frame is outside the source's range or never read).
    #[error("prompts {path}: {msg}")]
    Prompt {
        /// The prompt, mask, bank or exemplar file the message is about.
        path: PathBuf,
        /// What is wrong and how to fix it.
        msg: String,
    },
    /// A prompt that cannot be used on its reference frame: fatal, the run cannot follow the object.
    #[error("object {id} on frame {frame}: {msg}")]
    Object {
        /// The object's id in the prompt file, 1..=255.
        id: u8,
        /// Index of the object's reference frame in the source.
        frame: u64,
        /// What is wrong with the prompt and how to fix it.
        msg: String,
    },
    /// One frame cannot be read, decoded or processed (a corrupt image, a decoder error, a frame over
    /// `runtime.max_frame_pixels`); with `runtime.on_error: skip` the run reports it and goes on.
    #[error("frame {frame}: {msg}")]
    Frame {
        /// The frame's name: its image path, or `<video> frame <index>`.
        frame: String,
        /// What went wrong.
        msg: String,
    },
    /// A sink cannot write its output; this ends the run.
    #[error("sink {path}: {msg}")]
    Sink {
        /// The output file or folder the sink writes.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// An ONNX Runtime call failed outside a graph run (converted from `ort::Error`).
    #[error("onnx runtime: {0}")]
    Ort(String),
}

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Error::Ort(e.to_string())
    }
}

/// The library's result type; the error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
