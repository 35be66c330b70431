//! Models: the ONNX contract (`model.yaml`), ONNX Runtime sessions, and the letterbox into model input.
//! What the outputs mean for masks and matching is `post/` and `decode/`.

pub mod contract;
pub mod letterbox;
pub mod runtime;
pub mod session;

pub use contract::{ModelSpec, QueryInput};
pub use letterbox::{Letterbox, Preprocessor};
pub use runtime::Device;
pub use session::{Features, Model, Queries, QueryAnchor, SessionOptions, Tensor};
