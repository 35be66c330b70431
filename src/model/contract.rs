//! `model.yaml`: what a model folder promises (input size, normalisation, queries, graph I/O).
//! Parsing and checking the promise against the real graphs happens here; running them is `session.rs`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;

/// The parsed `model.yaml` of a model folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model's name (e.g. `vprompt-lite0`), shown in messages and stored in banks.
    pub name: String,
    /// `input`: the square input size and per-channel normalisation.
    pub input: InputSpec,
    /// `queries`: how the decoder's query axis is laid out.
    pub queries: QuerySpec,
    /// `classifier`: how match scores and class descriptors are made from embeddings.
    pub classifier: ClassifierSpec,
    /// `graphs`: the three ONNX graphs and their declared inputs and outputs.
    pub graphs: GraphsSpec,
    /// Free-form notes (backbone, data, recipe, hardware); optional, not read by vprompt.
    #[serde(default)]
    pub provenance: serde_yaml_ng::Value,
}

/// `input` of `model.yaml`: the model input's size and normalisation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Side of the square model input, in model-input pixels.
    pub size: u32,
    /// Per-channel (RGB) mean subtracted from `rgb / 255`.
    pub mean: [f32; 3],
    /// Per-channel (RGB) divisor applied after the mean; each must be > 0.
    pub std: [f32; 3],
}

/// `queries` of `model.yaml`: the decoder's `Q = generic + rows * levels` queries.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// Generic (learned) queries, first in the query axis.
    pub generic: usize,
    /// Side of the interactive point grid (DINOv: 20).
    pub grid: usize,
    /// Granularity levels per point.
    pub levels: usize,
}

/// `classifier` of `model.yaml`: how embeddings become match scores and class descriptors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSpec {
    /// Scale of the cosine similarity: match score `s = logit_scale * dot(query_embed, prompt_embed)`.
    pub logit_scale: f32,
    /// Added to `s` before the sigmoid in generic class probabilities; default 0.
    #[serde(default)]
    pub logit_bias: f32,
    /// Encoder outputs pooled inside a mask into the class descriptor of auto-labeling's proposals and
    /// exemplars (`decode/proposals.rs`). Empty: every encoder output except `mask_feat`.
    #[serde(default)]
    pub descriptor: Vec<String>,
}

/// `graphs` of `model.yaml`: the model's three ONNX graphs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphsSpec {
    /// Image `[B,3,S,S]` to feature maps, including `mask_feat`.
    pub encoder: GraphSpec,
    /// Encoder outputs and `prompt_mask` to one L2-normalised `prompt_embed` per prompt.
    pub prompt_encoder: GraphSpec,
    /// Encoder outputs and query rows (`points` or `anchors`) to per-query IoU, boxes and embeddings.
    pub decoder: GraphSpec,
}

/// One graph of `model.yaml`: its file and the tensors it promises.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSpec {
    /// The self-contained `.onnx` file, relative to the model folder.
    pub file: PathBuf,
    /// The inputs vprompt feeds, checked against the graph before any frame is read.
    pub inputs: Vec<TensorSpec>,
    /// The outputs vprompt reads, checked against the graph before any frame is read.
    pub outputs: Vec<TensorSpec>,
}

/// One declared input or output tensor of a graph.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name in the graph (see [`names`] for the ones vprompt feeds or reads).
    pub name: String,
    /// Element type, the YAML key `type`; the contract takes `f32` only.
    #[serde(rename = "type")]
    pub dtype: String,
    /// Dimensions: integers must match the graph; named ones (`batch`, `points`, ...) may be dynamic.
    pub shape: Vec<Dim>,
}

/// The decoder's interactive query input: which of the two forms of the contract a model declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryInput {
    /// `points f32 [N,2]`: `(x, y)` per row; the decoder makes its own anchor box around each point.
    Points,
    /// `anchors f32 [N,4]`: `(cx, cy, w, h)` per row; `w = h = 0` is a point, `w, h > 0` a box.
    Anchors,
}

impl QueryInput {
    /// The decoder input's name.
    pub fn name(self) -> &'static str {
        match self {
            QueryInput::Points => names::POINTS,
            QueryInput::Anchors => names::ANCHORS,
        }
    }

    /// Values per row.
    pub fn width(self) -> usize {
        match self {
            QueryInput::Points => 2,
            QueryInput::Anchors => 4,
        }
    }
}

/// One dimension of a tensor: a fixed size or a named, possibly dynamic one (`batch`, `points`, ...).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Dim {
    /// A size the graph must have exactly when it states one.
    Fixed(i64),
    /// A symbolic size (`batch`, `prompts`, `points`, `anchors`, `queries`) that may be dynamic.
    Named(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Named(s) => f.write_str(s),
        }
    }
}

impl TensorSpec {
    /// Size of dimension `i` when it is fixed.
    pub fn fixed(&self, i: usize) -> Option<usize> {
        match self.shape.get(i) {
            Some(Dim::Fixed(n)) if *n >= 0 => Some(*n as usize),
            _ => None,
        }
    }

    fn shape_text(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// The tensor names vprompt itself feeds or reads; all others are passed from encoder outputs by name.
pub mod names {
    /// Encoder input: the letterboxed, normalised frames, f32 `[B,3,S,S]`.
    pub const IMAGE: &str = "image";
    /// Encoder output: stride-4 mask features, f32 `[B,M,S/4,S/4]`.
    pub const MASK_FEAT: &str = "mask_feat";
    /// Prompt encoder input: 1 inside each prompt, 0 outside, f32 `[P,1,S,S]` in model-input pixels.
    pub const PROMPT_MASK: &str = "prompt_mask";
    /// Prompt encoder output: one L2-normalised embedding per prompt, f32 `[P,D]`.
    pub const PROMPT_EMBED: &str = "prompt_embed";
    /// Decoder input: query points `(x, y)` in `[0,1]` of the model input, f32 `[N,2]`.
    pub const POINTS: &str = "points";
    /// Decoder input: query anchors `(cx, cy, w, h)` in `[0,1]` of the model input, f32 `[N,4]`.
    pub const ANCHORS: &str = "anchors";
    /// Decoder output: each query's predicted IoU as a probability, f32 `[B,Q]`.
    pub const PRED_IOU: &str = "pred_iou";
    /// Decoder output: each query's box, `cxcywh` normalised to the model input, f32 `[B,Q,4]`.
    pub const PRED_BOXES: &str = "pred_boxes";
    /// Decoder output: each query's L2-normalised embedding, f32 `[B,Q,D]`.
    pub const QUERY_EMBED: &str = "query_embed";
    /// Decoder output: each query's mask coefficients over `mask_feat` channels, f32 `[B,Q,M]`.
    pub const MASK_EMBED: &str = "mask_embed";
}

impl ModelSpec {
    /// Reads and checks `model.yaml` in `dir` (the parts that need no graph).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("model.yaml");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Model {
            path: path.clone(),
            msg: format!(
                "cannot read it ({e}); `model:` must name a model folder holding model.yaml and its ONNX graphs"
            ),
        })?;
        Self::parse(&text, &path)
    }

    /// Parses and checks the text of a `model.yaml`; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let spec: ModelSpec = serde_yaml_ng::from_str(text).map_err(|e| Error::Model {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        spec.check_self(path)?;
        Ok(spec)
    }

    fn check_self(&self, path: &Path) -> Result<(), Error> {
        let bad = |msg: String| Error::Model {
            path: path.to_path_buf(),
            msg,
        };
        let s = self.input.size;
        if s == 0 || s % 32 != 0 {
            return Err(bad(format!(
                "input.size is {s}; it must be a positive multiple of 32"
            )));
        }
        if self.input.std.iter().any(|v| *v <= 0.0) {
            return Err(bad("input.std must be positive".into()));
        }
        if self.queries.grid == 0 || self.queries.levels == 0 {
            return Err(bad(
                "queries.grid and queries.levels must be at least 1".into()
            ));
        }
        let g = &self.graphs;
        let need = |graph: &str, spec: &GraphSpec, inputs: &[&str], outputs: &[&str]| {
            for n in inputs {
                if !spec.inputs.iter().any(|t| t.name == *n) {
                    return Err(bad(format!("graphs.{graph}.inputs must list `{n}`")));
                }
            }
            for n in outputs {
                if !spec.outputs.iter().any(|t| t.name == *n) {
                    return Err(bad(format!("graphs.{graph}.outputs must list `{n}`")));
                }
            }
            for t in spec.inputs.iter().chain(&spec.outputs) {
                if t.dtype != "f32" {
                    return Err(bad(format!(
                        "graphs.{graph}: tensor `{}` has type `{}`; the contract uses f32 only",
                        t.name, t.dtype
                    )));
                }
            }
            Ok(())
        };
        use names::*;
        need("encoder", &g.encoder, &[IMAGE], &[MASK_FEAT])?;
        need(
            "prompt_encoder",
            &g.prompt_encoder,
            &[PROMPT_MASK],
            &[PROMPT_EMBED],
        )?;
        need(
            "decoder",
            &g.decoder,
            &[],
            &[PRED_IOU, PRED_BOXES, QUERY_EMBED, MASK_EMBED],
        )?;
        for n in &self.classifier.descriptor {
            match g.encoder.outputs.iter().find(|o| o.name == *n) {
                Some(t) if t.shape.len() == 4 => {}
                Some(_) => {
                    return Err(bad(format!(
                        "classifier.descriptor: `{n}` must be a 4-d feature map [batch, C, H, W]"
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "classifier.descriptor: `{n}` is not an encoder output; name one of graphs.encoder.outputs"
                    )))
                }
            }
        }
        let query = self.query_input_checked().map_err(bad)?;
        for (graph, spec, own) in [
            ("prompt_encoder", &g.prompt_encoder, PROMPT_MASK),
            ("decoder", &g.decoder, query.name()),
        ] {
            for t in &spec.inputs {
                if t.name != own && !g.encoder.outputs.iter().any(|o| o.name == t.name) {
                    return Err(bad(format!(
                        "graphs.{graph}.inputs: `{}` is neither `{own}` nor an encoder output",
                        t.name
                    )));
                }
            }
        }
        // The mask embedding is dotted with the mask features: the same M on both sides.
        let mask_embed = g.decoder.outputs.iter().find(|t| t.name == MASK_EMBED);
        let m_embed = mask_embed.and_then(|t| t.fixed(2));
        let m_feat = self.mask_feat_dims().map(|(m, _)| m);
        if let (Some(a), Some(b)) = (m_embed, m_feat) {
            if a != b {
                return Err(bad(format!(
                    "graphs.decoder.outputs: `mask_embed` has {a} channels but the encoder's `mask_feat` \
                     has {b}; they must be equal"
                )));
            }
        }
        Ok(())
    }

    /// The decoder's interactive query input (`points` or `anchors`), as `model.yaml` declares it.
    pub fn query_input(&self) -> QueryInput {
        self.query_input_checked().unwrap_or(QueryInput::Points)
    }

    fn query_input_checked(&self) -> Result<QueryInput, String> {
        let inputs = &self.graphs.decoder.inputs;
        let find = |n: &str| inputs.iter().find(|t| t.name == n);
        let (kind, t) = match (find(names::POINTS), find(names::ANCHORS)) {
            (Some(t), None) => (QueryInput::Points, t),
            (None, Some(t)) => (QueryInput::Anchors, t),
            (Some(_), Some(_)) => {
                return Err(
                    "graphs.decoder.inputs lists both `points` and `anchors`; a decoder takes one of them"
                        .into(),
                )
            }
            (None, None) => {
                return Err(
                    "graphs.decoder.inputs must list `points` ([N, 2]) or `anchors` ([N, 4])".into(),
                )
            }
        };
        let width = kind.width();
        if t.shape.len() != 2 || t.fixed(1) != Some(width) {
            return Err(format!(
                "graphs.decoder.inputs: `{}` is declared {}; it must be [N, {width}] with the integer {width}",
                t.name,
                t.shape_text()
            ));
        }
        Ok(kind)
    }

    /// Number of queries the decoder returns for `rows` interactive query rows (points or anchors).
    pub fn query_count(&self, rows: usize) -> usize {
        self.queries.generic + rows * self.queries.levels
    }

    /// Stride-4 mask feature channels (M) and grid side, from the encoder's `mask_feat`.
    pub fn mask_feat_dims(&self) -> Option<(usize, usize)> {
        let t = self
            .graphs
            .encoder
            .outputs
            .iter()
            .find(|t| t.name == names::MASK_FEAT)?;
        Some((t.fixed(1)?, t.fixed(2)?))
    }
}

/// Compares a graph's real inputs or outputs with what `model.yaml` says.
/// `actual` holds (name, element type text, dims with -1 for dynamic).
pub fn check_tensors(
    graph_file: &Path,
    role: &str,
    declared: &[TensorSpec],
    actual: &[(String, String, Vec<i64>)],
) -> Result<(), Error> {
    let bad = |msg: String| Error::Contract {
        graph: graph_file.to_path_buf(),
        msg,
    };
    for d in declared {
        let Some((_, ty, dims)) = actual.iter().find(|(n, _, _)| *n == d.name) else {
            let have: Vec<&str> = actual.iter().map(|(n, _, _)| n.as_str()).collect();
            return Err(bad(format!(
                "{role} `{}` is declared in model.yaml but the graph has no such {role}; it has: {}",
                d.name,
                have.join(", ")
            )));
        };
        if ty != "f32" {
            return Err(bad(format!(
                "{role} `{}` is {ty} in the graph; the contract wants f32",
                d.name
            )));
        }
        if dims.len() != d.shape.len() {
            return Err(bad(format!(
                "{role} `{}` has rank {} in the graph but model.yaml declares {}",
                d.name,
                dims.len(),
                d.shape_text()
            )));
        }
        for (i, (real, want)) in dims.iter().zip(&d.shape).enumerate() {
            if let Dim::Fixed(n) = want {
                if *real >= 0 && real != n {
                    return Err(bad(format!(
                        "{role} `{}` dimension {i} is {real} in the graph but model.yaml declares {}",
                        d.name,
                        d.shape_text()
                    )));
                }
            }
        }
    }
    if role == "input" {
        for (n, _, _) in actual {
            if !declared.iter().any(|d| d.name == *n) {
                return Err(bad(format!(
                    "the graph has an input `{n}` that model.yaml does not declare, so vprompt cannot feed it"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small `model.yaml` whose decoder takes `query` (a YAML tensor line) and whose masks have `m`
    /// channels in the encoder and `me` in the decoder.
    fn yaml(query: &str, m: usize, me: usize) -> String {
        format!(
            "name: t\ninput: {{ size: 64, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] }}\n\
             queries: {{ generic: 4, grid: 20, levels: 3 }}\nclassifier: {{ logit_scale: 10.0 }}\n\
             graphs:\n  encoder:\n    file: e.onnx\n    inputs: [ {{ name: image, type: f32, shape: [batch, 3, 64, 64] }} ]\n\
             \x20   outputs:\n      - {{ name: feat8, type: f32, shape: [batch, 8, 8, 8] }}\n\
             \x20     - {{ name: mask_feat, type: f32, shape: [batch, {m}, 16, 16] }}\n\
             \x20 prompt_encoder:\n    file: p.onnx\n    inputs:\n      - {{ name: feat8, type: f32, shape: [1, 8, 8, 8] }}\n\
             \x20     - {{ name: prompt_mask, type: f32, shape: [prompts, 1, 64, 64] }}\n\
             \x20   outputs: [ {{ name: prompt_embed, type: f32, shape: [prompts, 16] }} ]\n\
             \x20 decoder:\n    file: d.onnx\n    inputs:\n      - {{ name: feat8, type: f32, shape: [batch, 8, 8, 8] }}\n\
             \x20     - {query}\n    outputs:\n      - {{ name: pred_iou, type: f32, shape: [batch, queries] }}\n\
             \x20     - {{ name: pred_boxes, type: f32, shape: [batch, queries, 4] }}\n\
             \x20     - {{ name: query_embed, type: f32, shape: [batch, queries, 16] }}\n\
             \x20     - {{ name: mask_embed, type: f32, shape: [batch, queries, {me}] }}\n"
        )
    }

    fn parse(text: &str) -> Result<ModelSpec, String> {
        ModelSpec::parse(text, Path::new("model.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn both_query_forms_are_read() {
        let points = parse(&yaml(
            "{ name: points, type: f32, shape: [points, 2] }",
            32,
            32,
        ))
        .unwrap();
        assert_eq!(points.query_input(), QueryInput::Points);
        let anchors = parse(&yaml(
            "{ name: anchors, type: f32, shape: [anchors, 4] }",
            64,
            64,
        ))
        .unwrap();
        assert_eq!(anchors.query_input(), QueryInput::Anchors);
        assert_eq!(anchors.mask_feat_dims(), Some((64, 16)));
        assert_eq!(anchors.query_count(400), 4 + 400 * 3);
    }

    #[test]
    fn wrong_query_inputs_are_refused() {
        let e = parse(&yaml(
            "{ name: anchors, type: f32, shape: [anchors, 2] }",
            32,
            32,
        ))
        .unwrap_err();
        assert!(e.contains("`anchors` is declared [anchors, 2]"), "{e}");
        assert!(e.contains("[N, 4]"), "{e}");
        let e = parse(&yaml(
            "{ name: points, type: f32, shape: [points, dims] }",
            32,
            32,
        ))
        .unwrap_err();
        assert!(e.contains("[N, 2]"), "{e}");
        let e = parse(&yaml(
            "{ name: feat16, type: f32, shape: [batch, 8, 4, 4] }",
            32,
            32,
        ))
        .unwrap_err();
        assert!(
            e.contains("must list `points` ([N, 2]) or `anchors`"),
            "{e}"
        );
        let both = yaml("{ name: points, type: f32, shape: [points, 2] }", 32, 32).replace(
            "      - { name: points",
            "      - { name: anchors, type: f32, shape: [anchors, 4] }\n      - { name: points",
        );
        let e = parse(&both).unwrap_err();
        assert!(e.contains("both `points` and `anchors`"), "{e}");
    }

    #[test]
    fn mask_channels_must_agree() {
        let e = parse(&yaml(
            "{ name: anchors, type: f32, shape: [anchors, 4] }",
            64,
            32,
        ))
        .unwrap_err();
        assert!(e.contains("`mask_embed` has 32 channels"), "{e}");
        assert!(e.contains("`mask_feat` has 64"), "{e}");
    }
}
