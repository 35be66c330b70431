//! The three ONNX graphs of a model as sessions: tensors in, tensors out, checked against the contract.
//! Pixels, letterboxing and masks live elsewhere (`letterbox.rs`, `post/`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorRef, ValueType};

use super::contract::{check_tensors, names, GraphSpec, ModelSpec, QueryInput};
use super::runtime::{cuda_compiled_in, ensure_loaded, Device};
use crate::error::{Error, Result};

/// How to start the sessions.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Where the graphs run (`runtime.device`); default the CPU.
    pub device: Device,
    /// ONNX Runtime intra-op threads per session.
    pub threads: usize,
    /// Explicit library path (else `ORT_DYLIB_PATH` or the project-local install).
    pub library: Option<PathBuf>,
    /// Sessions opened for the encoder and for the decoder: that many calls of each run at once (one per
    /// pipeline worker). The prompt encoder, used once per prompt, gets one.
    pub sessions: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            device: Device::Cpu,
            threads: 2,
            library: None,
            sessions: 1,
        }
    }
}

/// A dense f32 tensor that owns its values (row-major).
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Size of each dimension, outermost first.
    pub shape: Vec<usize>,
    /// The values, row-major: as many as the product of `shape`.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor of `shape` over `data`; `data.len()` must equal the product of `shape` (checked in
    /// debug builds).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    /// Item `i` of the leading (batch) axis, as a tensor with batch 1.
    pub fn item(&self, i: usize) -> Tensor {
        let per: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = 1;
        Tensor::new(shape, self.data[i * per..(i + 1) * per].to_vec())
    }

    /// Stacks batch-1 tensors of equal shape along the batch axis.
    pub fn stack(items: &[&Tensor]) -> Tensor {
        let mut shape = items[0].shape.clone();
        shape[0] = items.len();
        let mut data = Vec::with_capacity(items.iter().map(|t| t.data.len()).sum());
        for t in items {
            data.extend_from_slice(&t.data);
        }
        Tensor::new(shape, data)
    }
}

/// One interactive query row of the decoder, `cxcywh` normalised to `[0,1]` of the model input: a point
/// when `w = h = 0` (the decoder sizes its K anchors itself), a box when `w, h > 0` (its K queries are all
/// anchored on the box).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryAnchor {
    /// `(cx, cy, w, h)` in `[0,1]` of the model input; `w = h = 0` for a point.
    pub cxcywh: [f32; 4],
}

impl QueryAnchor {
    /// A point `(x, y)`, normalised to the model input.
    pub fn point(x: f32, y: f32) -> Self {
        QueryAnchor {
            cxcywh: [x, y, 0.0, 0.0],
        }
    }

    /// A box `xyxy`, normalised to the model input; a box without area is its centre point.
    pub fn from_xyxy(b: [f32; 4]) -> Self {
        let (w, h) = (b[2] - b[0], b[3] - b[1]);
        let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
        if w > 0.0 && h > 0.0 {
            QueryAnchor {
                cxcywh: [cx, cy, w, h],
            }
        } else {
            QueryAnchor::point(cx, cy)
        }
    }

    /// Whether the row is a point (no width or no height).
    pub fn is_point(&self) -> bool {
        self.cxcywh[2] <= 0.0 || self.cxcywh[3] <= 0.0
    }

    /// The row as the decoder input of `kind` takes it: `(x, y)` (a box becomes its centre) or
    /// `(cx, cy, w, h)`.
    pub fn row(&self, kind: QueryInput) -> &[f32] {
        match kind {
            QueryInput::Points => &self.cxcywh[..2],
            QueryInput::Anchors => &self.cxcywh,
        }
    }
}

/// Encoder outputs of one frame (batch 1), by name.
#[derive(Debug, Clone)]
pub struct Features {
    /// Every encoder output as (name, tensor with batch 1), in the graph's order.
    pub maps: Vec<(String, Tensor)>,
}

impl Features {
    /// The encoder output `name` (e.g. `mask_feat`), if the encoder has it.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.maps.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Decoder outputs of one frame: per query a predicted IoU, a box, an embedding and a mask embedding.
#[derive(Debug, Clone)]
pub struct Queries {
    /// Number of queries Q: `queries.generic` plus interactive rows times `queries.levels`.
    pub count: usize,
    /// Each query's predicted IoU, a probability in `[0,1]`.
    pub iou: Vec<f32>,
    /// `cxcywh`, normalised to the model input.
    pub boxes_cxcywh: Vec<[f32; 4]>,
    /// `count x embed_dim`, L2-normalised rows.
    pub embed: Vec<f32>,
    /// D, the length of an embedding row.
    pub embed_dim: usize,
    /// `count x mask_dim`.
    pub mask_embed: Vec<f32>,
    /// M, the length of a mask embedding row (the channels of `mask_feat`).
    pub mask_dim: usize,
}

impl Queries {
    /// Query `q`'s L2-normalised embedding (`embed_dim` values).
    pub fn embed_row(&self, q: usize) -> &[f32] {
        &self.embed[q * self.embed_dim..(q + 1) * self.embed_dim]
    }
    /// Query `q`'s mask embedding (`mask_dim` values): dotted with `mask_feat`, its mask logits.
    pub fn mask_row(&self, q: usize) -> &[f32] {
        &self.mask_embed[q * self.mask_dim..(q + 1) * self.mask_dim]
    }
}

struct Graph {
    file: PathBuf,
    spec: GraphSpec,
    /// Each session runs one call at a time; a call takes a free one (or waits its turn on one).
    sessions: Vec<Mutex<Session>>,
    turn: AtomicUsize,
}

impl Graph {
    /// A free session, else the next one in turn (waiting for it).
    fn session(&self) -> Result<MutexGuard<'_, Session>> {
        let poisoned =
            || Error::Runtime(format!("{}: a previous run panicked", self.file.display()));
        for s in &self.sessions {
            match s.try_lock() {
                Ok(g) => return Ok(g),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
            }
        }
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        self.sessions[i].lock().map_err(|_| poisoned())
    }
}

/// A loaded model: its spec and its graphs' sessions (`SessionOptions::sessions` for the encoder and
/// the decoder, one for the prompt encoder).
pub struct Model {
    /// The model folder it was loaded from.
    pub dir: PathBuf,
    /// The parsed and checked `model.yaml`.
    pub spec: ModelSpec,
    /// sha256 over model.yaml and the three graph files: the identity banks are tied to.
    pub identity: String,
    encoder: Graph,
    prompt_encoder: Graph,
    decoder: Graph,
}

impl Model {
    /// Loads `dir/model.yaml`, opens the graphs and checks every declared tensor against them.
    pub fn load(dir: &Path, opts: &SessionOptions) -> Result<Model> {
        let spec = ModelSpec::load(dir)?;
        let env = ensure_loaded(opts.library.as_deref())?;
        if let Device::Cuda(_) = opts.device {
            if !cuda_compiled_in() {
                return Err(Error::Runtime(
                    "device cuda was asked for, but this ONNX Runtime library has no CUDA execution provider; \
                     install the onnxruntime-gpu wheel's library (ORT_DYLIB_PATH) or use `device: cpu`"
                        .into(),
                ));
            }
        }
        let open = |g: &GraphSpec, count: usize| -> Result<Graph> {
            let file = dir.join(&g.file);
            let session = open_session(&env, &file, opts)?;
            let actual_in = outlets(session.inputs());
            let actual_out = outlets(session.outputs());
            check_tensors(&file, "input", &g.inputs, &actual_in)?;
            check_tensors(&file, "output", &g.outputs, &actual_out)?;
            let mut sessions = vec![Mutex::new(session)];
            for _ in 1..count {
                sessions.push(Mutex::new(open_session(&env, &file, opts)?));
            }
            Ok(Graph {
                file,
                spec: g.clone(),
                sessions,
                turn: AtomicUsize::new(0),
            })
        };
        let n = opts.sessions.max(1);
        let encoder = open(&spec.graphs.encoder, n)?;
        let prompt_encoder = open(&spec.graphs.prompt_encoder, 1)?;
        let decoder = open(&spec.graphs.decoder, n)?;
        let identity = identity_of(dir, &spec)?;
        Ok(Model {
            dir: dir.to_path_buf(),
            spec,
            identity,
            encoder,
            prompt_encoder,
            decoder,
        })
    }

    /// Side of the square model input, in model-input pixels (`input.size`).
    pub fn input_size(&self) -> u32 {
        self.spec.input.size
    }

    /// Runs the encoder on a batch `[B,3,S,S]` of normalised images; returns one `Features` per item.
    pub fn encode(&self, images: &Tensor) -> Result<Vec<Features>> {
        let outs = run(&self.encoder, &[(names::IMAGE, images)])?;
        let b = images.shape[0];
        if b == 1 {
            // One item: the outputs are its features as they are, moved, not copied.
            return Ok(vec![Features { maps: outs }]);
        }
        Ok((0..b)
            .map(|i| Features {
                maps: outs.iter().map(|(n, t)| (n.clone(), t.item(i))).collect(),
            })
            .collect())
    }

    /// Letterboxes one image with `pre` and encodes it alone.
    pub fn encode_image(
        &self,
        pre: &mut super::Preprocessor,
        image: &image::RgbImage,
    ) -> Result<(Features, super::Letterbox)> {
        let s = self.input_size() as usize;
        let mut input = vec![0.0f32; 3 * s * s];
        let lb = pre.fill(image, &mut input);
        let feats = self
            .encode(&Tensor::new(vec![1, 3, s, s], input))?
            .pop()
            .ok_or_else(|| Error::Runtime("the encoder returned no item".into()))?;
        Ok((feats, lb))
    }

    /// The decoder's interactive query input (`points` or `anchors`).
    pub fn query_input(&self) -> QueryInput {
        self.spec.query_input()
    }

    /// Runs the decoder on a batch of frames' features with the given interactive query rows. A decoder
    /// that takes `points` gets each row's centre (a box prompt becomes its centre point); one that takes
    /// `anchors` gets the rows as they are. Query `G + n*K + k` is row `n` at level `k`.
    pub fn decode(&self, feats: &[&Features], anchors: &[QueryAnchor]) -> Result<Vec<Queries>> {
        let kind = self.query_input();
        let rows = Tensor::new(
            vec![anchors.len(), kind.width()],
            anchors
                .iter()
                .flat_map(|a| a.row(kind).iter().copied())
                .collect(),
        );
        let stacked = stack_inputs(&self.decoder, feats)?;
        let mut inputs: Vec<(&str, &Tensor)> = stacked
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_ref()))
            .collect();
        inputs.push((kind.name(), &rows));
        let outs = run(&self.decoder, &inputs)?;
        let get = |n: &str| -> Result<&Tensor> {
            outs.iter()
                .find(|(k, _)| k == n)
                .map(|(_, t)| t)
                .ok_or_else(|| Error::Contract {
                    graph: self.decoder.file.clone(),
                    msg: format!("output `{n}` missing at run time"),
                })
        };
        let (iou, boxes, embed, mask) = (
            get(names::PRED_IOU)?,
            get(names::PRED_BOXES)?,
            get(names::QUERY_EMBED)?,
            get(names::MASK_EMBED)?,
        );
        let b = feats.len();
        let q = self.spec.query_count(anchors.len());
        let shape_err = |n: &str, t: &Tensor| Error::Contract {
            graph: self.decoder.file.clone(),
            msg: format!(
                "output `{n}` has shape {:?} at run time; expected batch {b} and {q} queries \
                 (generic + rows x levels)",
                t.shape
            ),
        };
        if iou.shape != [b, q] {
            return Err(shape_err(names::PRED_IOU, iou));
        }
        if boxes.shape != [b, q, 4] {
            return Err(shape_err(names::PRED_BOXES, boxes));
        }
        if embed.shape.len() != 3 || embed.shape[..2] != [b, q] {
            return Err(shape_err(names::QUERY_EMBED, embed));
        }
        if mask.shape.len() != 3 || mask.shape[..2] != [b, q] {
            return Err(shape_err(names::MASK_EMBED, mask));
        }
        let (d, m) = (embed.shape[2], mask.shape[2]);
        if b == 1 {
            // One item: its outputs moved, not copied.
            let mut outs = outs;
            let mut take = |n: &str| {
                outs.iter_mut()
                    .find(|(k, _)| k == n)
                    .map(|(_, t)| std::mem::take(&mut t.data))
                    .unwrap_or_default()
            };
            let boxes = take(names::PRED_BOXES);
            return Ok(vec![Queries {
                count: q,
                iou: take(names::PRED_IOU),
                boxes_cxcywh: boxes
                    .chunks_exact(4)
                    .map(|c| [c[0], c[1], c[2], c[3]])
                    .collect(),
                embed: take(names::QUERY_EMBED),
                embed_dim: d,
                mask_embed: take(names::MASK_EMBED),
                mask_dim: m,
            }]);
        }
        Ok((0..b)
            .map(|i| Queries {
                count: q,
                iou: iou.data[i * q..(i + 1) * q].to_vec(),
                boxes_cxcywh: boxes.data[i * q * 4..(i + 1) * q * 4]
                    .chunks_exact(4)
                    .map(|c| [c[0], c[1], c[2], c[3]])
                    .collect(),
                embed: embed.data[i * q * d..(i + 1) * q * d].to_vec(),
                embed_dim: d,
                mask_embed: mask.data[i * q * m..(i + 1) * q * m].to_vec(),
                mask_dim: m,
            })
            .collect())
    }

    /// Encodes `P` prompt masks (`[P,1,S,S]`, 1 inside) on one frame's features; returns `P` embeddings.
    pub fn encode_prompts(&self, feats: &Features, masks: &Tensor) -> Result<Vec<Vec<f32>>> {
        let stacked = stack_inputs(&self.prompt_encoder, &[feats])?;
        let mut inputs: Vec<(&str, &Tensor)> = stacked
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_ref()))
            .collect();
        inputs.push((names::PROMPT_MASK, masks));
        let outs = run(&self.prompt_encoder, &inputs)?;
        let t = &outs
            .iter()
            .find(|(n, _)| n == names::PROMPT_EMBED)
            .ok_or_else(|| Error::Contract {
                graph: self.prompt_encoder.file.clone(),
                msg: "output `prompt_embed` missing at run time".into(),
            })?
            .1;
        let p = masks.shape[0];
        if t.shape.len() != 2 || t.shape[0] != p {
            return Err(Error::Contract {
                graph: self.prompt_encoder.file.clone(),
                msg: format!(
                    "output `prompt_embed` has shape {:?}; expected [{p}, D]",
                    t.shape
                ),
            });
        }
        Ok(t.data
            .chunks_exact(t.shape[1])
            .map(|c| c.to_vec())
            .collect())
    }
}

/// The encoder outputs a graph takes, stacked over a batch of frames; one frame's are lent as they are.
fn stack_inputs<'a>(
    graph: &Graph,
    feats: &[&'a Features],
) -> Result<Vec<(String, Cow<'a, Tensor>)>> {
    let mut out = Vec::new();
    for t in &graph.spec.inputs {
        if t.name == names::POINTS || t.name == names::ANCHORS || t.name == names::PROMPT_MASK {
            continue;
        }
        let items: Vec<&Tensor> = feats
            .iter()
            .map(|f| {
                f.get(&t.name).ok_or_else(|| Error::Contract {
                    graph: graph.file.clone(),
                    msg: format!("input `{}` is not among the encoder's outputs", t.name),
                })
            })
            .collect::<Result<_>>()?;
        let batch = match items.as_slice() {
            [one] => Cow::Borrowed(*one),
            _ => Cow::Owned(Tensor::stack(&items)),
        };
        out.push((t.name.clone(), batch));
    }
    Ok(out)
}

fn run(graph: &Graph, inputs: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>> {
    let values = inputs
        .iter()
        .map(|(name, t)| {
            let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            let v = TensorRef::from_array_view((shape, t.data.as_slice()))?;
            Ok((name.to_string(), v.into()))
        })
        .collect::<Result<Vec<(String, ort::session::SessionInputValue<'_>)>, ort::Error>>()?;
    let mut session = graph.session()?;
    let outputs = session.run(values).map_err(|e| Error::Contract {
        graph: graph.file.clone(),
        msg: format!("run failed: {e}"),
    })?;
    let mut out = Vec::new();
    for (name, value) in outputs.iter() {
        let (shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| Error::Contract {
                graph: graph.file.clone(),
                msg: format!("output `{name}`: {e}"),
            })?;
        out.push((
            name.to_string(),
            Tensor::new(shape.iter().map(|&d| d as usize).collect(), data.to_vec()),
        ));
    }
    Ok(out)
}

fn open_session(
    env: &ort::environment::Environment,
    file: &Path,
    opts: &SessionOptions,
) -> Result<Session> {
    if !file.is_file() {
        return Err(Error::Contract {
            graph: file.to_path_buf(),
            msg: "file not found; the model folder must hold the graph named in model.yaml".into(),
        });
    }
    let mut builder = Session::builder(env)
        .map_err(|e| Error::Ort(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(ort::Error::from)?
        .with_intra_threads(opts.threads.max(1))
        .map_err(ort::Error::from)?;
    match opts.device {
        Device::Cpu => {}
        Device::Cuda(id) => {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(id)
                    .build()
                    .error_on_failure()])
                .map_err(|e| {
                    Error::Runtime(format!(
                        "CUDA device {id} could not be used ({e}); check the driver and the onnxruntime-gpu \
                         library, or use `device: cpu`"
                    ))
                })?;
        }
        Device::Auto => {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default().build()])
                .map_err(ort::Error::from)?;
        }
    }
    if std::fs::metadata(file).is_ok_and(|m| m.len() == 0) {
        return Err(Error::Contract {
            graph: file.to_path_buf(),
            msg: "the file is empty (0 bytes); copy or export the graph again".into(),
        });
    }
    builder.commit_from_file(file).map_err(|e| {
        let text = e.to_string();
        let hint = if text.contains("opset") || text.contains("Opset") {
            "the graph's opset is not one this ONNX Runtime supports; export it again with a released \
             opset (7 or above)"
        } else {
            "is it a complete ONNX file?"
        };
        Error::Contract {
            graph: file.to_path_buf(),
            msg: format!("ONNX Runtime cannot load it: {hint} ({text})"),
        }
    })
}

fn outlets(list: &[ort::value::Outlet]) -> Vec<(String, String, Vec<i64>)> {
    list.iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                let ty = if *ty == ort::value::TensorElementType::Float32 {
                    "f32".to_string()
                } else {
                    ty.to_string()
                };
                (o.name().to_string(), ty, shape.to_vec())
            }
            other => (o.name().to_string(), format!("{other:?}"), vec![]),
        })
        .collect()
}

fn identity_of(dir: &Path, spec: &ModelSpec) -> Result<String> {
    let files = [
        PathBuf::from("model.yaml"),
        spec.graphs.encoder.file.clone(),
        spec.graphs.prompt_encoder.file.clone(),
        spec.graphs.decoder.file.clone(),
    ];
    files_digest(files.iter().map(|f| dir.join(f))).map_err(|(path, e)| Error::Model {
        path,
        msg: format!("cannot read: {e}"),
    })
}

/// sha256 over the files' bytes in turn, as 32 hex digits (its first 16 bytes); on a read error, the
/// file and the error.
pub(crate) fn files_digest(
    files: impl IntoIterator<Item = PathBuf>,
) -> std::result::Result<String, (PathBuf, std::io::Error)> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for path in files {
        match std::fs::read(&path) {
            Ok(bytes) => h.update(&bytes),
            Err(e) => return Err((path, e)),
        }
    }
    Ok(h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect())
}
