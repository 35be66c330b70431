//! Finding and starting ONNX Runtime (loaded at run time, `load-dynamic`) and choosing the device.
//! A missing library is a clear error with the fix, checked before `ort` is touched (it would panic).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::Error;

/// Where the execution happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider (`cpu`, the default).
    Cpu,
    /// CUDA on the given device; fails when CUDA cannot be used.
    Cuda(i32),
    /// CUDA device 0 when ONNX Runtime can use it, else the CPU.
    Auto,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "auto" => Ok(Device::Auto),
            _ => match s.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Device::Cuda(n)),
                _ => Err(format!(
                    "unknown device `{s}`; use cpu, cuda, cuda:N or auto"
                )),
            },
        }
    }
}

/// The file name ONNX Runtime's shared library has on this platform.
const LIB_NAME: &str = "libonnxruntime.so";

/// The places searched for the library, in order: `ORT_DYLIB_PATH`, then the project-local install
/// (`.deps/onnxruntime/` beside the executable's checkout, or in the working directory).
pub fn library_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
        return out;
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/vprompt or target/debug/deps/test-binary
        for up in exe.ancestors().skip(1).take(4) {
            out.push(up.join(".deps/onnxruntime").join(LIB_NAME));
        }
    }
    out.push(PathBuf::from(".deps/onnxruntime").join(LIB_NAME));
    out
}

static INIT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process and returns its environment; later calls return the first outcome.
pub fn ensure_loaded(explicit: Option<&Path>) -> Result<ort::environment::Environment, Error> {
    INIT.get_or_init(|| load(explicit))
        .clone()
        .map_err(Error::Runtime)
}

fn load(explicit: Option<&Path>) -> Result<ort::environment::Environment, String> {
    let candidates = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => library_candidates(),
    };
    let Some(found) = candidates.iter().find(|p| p.is_file()) else {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "the ONNX Runtime library was not found (looked at: {}). Install it with `make deps` \
             (puts the PyPI onnxruntime wheel's libonnxruntime.so under .deps/onnxruntime/), or point \
             ORT_DYLIB_PATH at a libonnxruntime.so",
            tried.join(", ")
        ));
    };
    let builder = ort::init_from(found)
        .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", found.display()))?;
    builder
        .with_name("vprompt")
        .build()
        .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", found.display()))
}

/// Whether this ONNX Runtime build has the CUDA execution provider at all.
pub fn cuda_compiled_in() -> bool {
    use ort::ep::ExecutionProvider;
    ort::ep::CUDA::is_available().unwrap_or(false)
}
