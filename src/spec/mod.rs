//! The pipeline file (`pipelines/*.yaml`): its types, reading with line/column errors, `--set`
//! overrides, and checks. Building running pieces from it is `pipeline/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A whole pipeline: where frames come from, which model, what to find, where results go, how to run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// `source`: where frames come from (required).
    pub source: SourceSpec,
    /// Model folder (holds `model.yaml`).
    pub model: PathBuf,
    /// Prompt file for `propagate` (objects with masks, boxes, points or scribbles on reference frames).
    #[serde(default)]
    pub prompts: Option<PathBuf>,
    /// Prompt bank for `autolabel` (made by `vprompt bank build`).
    #[serde(default)]
    pub bank: Option<PathBuf>,
    /// `job`: what to compute for each frame and its thresholds; every key has a default.
    #[serde(default)]
    pub job: JobSpec,
    /// `sinks`: the outputs, at least one; each gets every frame, in order.
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
    /// `runtime`: queues, workers, batching, device and error policy; every key has a default.
    #[serde(default)]
    pub runtime: RuntimeSpec,
}

/// Exactly one of `video`, `frames`, `images`, plus an optional frame range and stride.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// A video file or any URL FFmpeg opens (rtsp://, http://, ...).
    #[serde(default)]
    pub video: Option<String>,
    /// A folder of numbered frames (DAVIS layout), read as one video in name order.
    #[serde(default)]
    pub frames: Option<PathBuf>,
    /// A folder of images or a glob pattern (JPEG, PNG), each image on its own.
    #[serde(default)]
    pub images: Option<String>,
    /// First frame index read (0-based, after decoding).
    #[serde(default)]
    pub start: u64,
    /// Frame index to stop before (none: to the end).
    #[serde(default)]
    pub end: Option<u64>,
    /// Keep every `stride`-th frame.
    #[serde(default = "one")]
    pub stride: u64,
    /// Frames per second to assume when the source has none (frames folders, images).
    #[serde(default)]
    pub fps: Option<f64>,
    /// Streams (URLs) only: reopen the stream when it drops or stalls, instead of ending the run there.
    #[serde(default)]
    pub reconnect: Option<ReconnectSpec>,
    /// Streams only: a stream that delivers nothing for this long counts as dropped.
    #[serde(default = "default_stall_ms")]
    pub stall_timeout_ms: u64,
    /// `I/N`: read only the frames whose index modulo N is I (0-based), so that N processes split a
    /// dataset without overlap. The same split on every machine for the same file list.
    #[serde(default)]
    pub shard: Option<String>,
}

fn default_stall_ms() -> u64 {
    10_000
}

impl Default for SourceSpec {
    fn default() -> Self {
        SourceSpec {
            video: None,
            frames: None,
            images: None,
            start: 0,
            end: None,
            stride: 1,
            fps: None,
            reconnect: None,
            stall_timeout_ms: default_stall_ms(),
            shard: None,
        }
    }
}

/// Shard `index` of `count`, parsed from `I/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// `I`: this process's share, 0 <= I < N.
    pub index: u64,
    /// `N`: the number of shards, at least 1.
    pub count: u64,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("shard `{s}`: expected I/N with 0 <= I < N (for example 0/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u64 = i.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether the frame with source index `index` is this shard's (`index % N == I`).
    pub fn admits(&self, index: u64) -> bool {
        index % self.count == self.index
    }
}

/// How a dropped stream is reopened: `attempts` tries in a row, waiting `backoff_ms` before the first
/// and twice as long before each next one (at most 30 s); a try that delivers a frame resets the count.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReconnectSpec {
    /// Tries in a row before the run ends at the drop (required, at most 1000).
    pub attempts: u32,
    /// Milliseconds to wait before the first try, doubled before each next one (default 500, at most
    /// 60000).
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

fn default_backoff_ms() -> u64 {
    500
}

/// Largest pipeline file read (bytes); a bigger file is not a pipeline description.
pub const MAX_PIPELINE_FILE_BYTES: u64 = 1 << 20;

fn one() -> u64 {
    1
}

/// What to compute for each frame.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// `propagate` (default), `autolabel` or `find`; see [`JobKind`].
    #[serde(default)]
    pub kind: JobKind,
    /// Keep interactive queries whose predicted IoU is above this (DINOv: 0.5).
    #[serde(default = "default_min_iou")]
    pub min_iou: f32,
    /// Box NMS threshold among the kept queries.
    #[serde(default = "default_nms_iou")]
    pub nms_iou: f32,
    /// Masks of at most this many frame pixels are dropped (DINOv: 50).
    #[serde(default = "default_min_area")]
    pub min_area: u64,
    /// An object's best match must reach this score (cosine similarity of the query to the object's
    /// memory) to be drawn; below it the frame gets an empty mask for that object.
    #[serde(default)]
    pub min_score: f32,
    /// Recent predictions kept per object besides the pinned first prompt (DINOv: 8).
    #[serde(default = "default_memory")]
    pub memory: usize,
    /// A prediction enters the memory only when its score (cosine similarity) reaches this. The default 0
    /// takes every prediction that passed the IoU, NMS and area filters (the shipped model's matches score
    /// 0.1-0.4, so a higher default would leave its memory empty).
    #[serde(default = "default_memory_min_score")]
    pub memory_min_score: f32,
    /// propagate: decode a box, point or scribble prompt on its reference frame and take the best
    /// candidate mask as the object's reference mask (true), or rasterise the prompt itself (false).
    #[serde(default = "yes")]
    pub prompt_decode: bool,
    /// autolabel: exemplars drawn per class and averaged into the class embedding (DINOv: 16).
    #[serde(default = "default_exemplars")]
    pub exemplars_per_class: usize,
    /// autolabel: seed of that draw, so runs repeat.
    #[serde(default)]
    pub seed: u64,
    /// autolabel: detections scoring below this are dropped.
    #[serde(default = "default_score_threshold")]
    pub score_threshold: f32,
    /// autolabel: how a detection is scored (class probability, or times the mask's predicted IoU).
    #[serde(default)]
    pub generic_score: GenericScore,
    /// autolabel: how instances are found and classified.
    #[serde(default)]
    pub labeler: LabelerSpec,
    /// autolabel: most detections kept per image (at most 255).
    #[serde(default = "default_max_detections")]
    pub max_detections: usize,
    /// autolabel: the record of finished images, for resuming (default: `manifest.jsonl` beside the
    /// first sink's output).
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// propagate: the per-object target model learned online and how it joins the decoder.
    #[serde(default)]
    pub target: TargetSpec,
    /// propagate, find: how box and click prompts are looked at closer on their reference image.
    #[serde(default)]
    pub focus: FocusSpec,
    /// propagate: output masks refined along the frame's colour edges.
    #[serde(default)]
    pub refine: RefineSpec,
}

/// Edge-aware refinement of propagate's output masks (`post/guided.rs`): a colour guided filter with the
/// frame as the guide moves each object's outline, upsampled from the decoder's stride-4 grid, onto the
/// frame's edges. Reference masks (an object's mask on the frame it is prompted on) stay as they are;
/// what the memories and target models learn from stays the unrefined mask.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RefineSpec {
    /// Refine (true) or keep the masks as the grid gives them (false).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The filter's window radius in cells of the mask grid (a cell: 4 model-input pixels, as frame
    /// pixels), so that it follows the grid's coarseness whatever the frame size (4.5 cells: 24 pixels
    /// on a 427x240 frame).
    #[serde(default = "default_refine_radius")]
    pub radius: f32,
    /// The filter's ridge: how strong a colour edge must be to move the outline (colours in [0, 1]).
    #[serde(default = "default_refine_eps")]
    pub eps: f32,
    /// A pixel is inside where the filtered mask exceeds this.
    #[serde(default = "default_refine_threshold")]
    pub threshold: f32,
}

impl Default for RefineSpec {
    fn default() -> Self {
        RefineSpec {
            enabled: true,
            radius: default_refine_radius(),
            eps: default_refine_eps(),
            threshold: default_refine_threshold(),
        }
    }
}

impl RefineSpec {
    /// Why the settings cannot be used, naming the key under `job.refine`.
    pub fn check(&self) -> Result<(), String> {
        if !(self.radius > 0.0 && self.radius <= 64.0) {
            return Err(
                "job.refine.radius: must be a number of grid cells in (0, 64] (e.g. 4.5)".into(),
            );
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err("job.refine.eps: must be a positive number (e.g. 0.0001)".into());
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err("job.refine.threshold: must be a number in (0, 1) (e.g. 0.5)".into());
        }
        Ok(())
    }

    /// The window radius in frame pixels for a frame whose long side is `frame_long` pixels and a model
    /// input of `input` pixels (the mask grid's stride is 4), at least 1.
    pub fn radius_px(&self, frame_long: u32, input: u32) -> usize {
        let cell = 4.0 * frame_long as f32 / input.max(1) as f32;
        (self.radius * cell).round().max(1.0) as usize
    }
}

fn default_refine_radius() -> f32 {
    4.5
}
fn default_refine_eps() -> f32 {
    1e-4
}
fn default_refine_threshold() -> f32 {
    0.5
}

/// Looking closer at a box or click prompt on its reference image (`decode/focus.rs`): the prompt is
/// decoded again on crops of the image around it, encoded at full model input size.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FocusSpec {
    /// Decode on crops as well (true) or on the whole image only (false).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A box prompt's crop: its box grown by this share of its width / height on every side.
    #[serde(default = "default_focus_margin")]
    pub margin: f32,
    /// A box prompt's crop is used only when its long side is at most this share of the image's.
    #[serde(default = "default_focus_max_share")]
    pub max_share: f32,
    /// A click prompt's square crops around its points, sides as shares of the image's long side.
    #[serde(default = "default_focus_scales")]
    pub scales: Vec<f32>,
    /// A click prompt's crops are skipped when their side is under this share of the model's input
    /// size: so small a crop would only be magnified, with no more detail than the image holds.
    #[serde(default = "default_focus_min_side")]
    pub min_side: f32,
    /// A click prompt: weight of a candidate's mean IoU with the other candidates (the views' agreement)
    /// beside its predicted IoU.
    #[serde(default = "default_focus_agreement")]
    pub agreement: f32,
    /// A click prompt: weight of a candidate's stability score (the share of its mask that stays when
    /// the logit threshold moves from -1 to +1) beside its predicted IoU.
    #[serde(default = "default_focus_stability")]
    pub stability: f32,
    /// A box or click prompt's chosen mask is moved onto the image's colour edges by a guided filter
    /// (`post/guided.rs`) with this radius in mask-grid cells of the whole image; 0: left as decoded.
    #[serde(default = "default_focus_edges")]
    pub edges: f32,
}

/// Most crops a click prompt may be decoded on.
pub const MAX_FOCUS_SCALES: usize = 8;

impl Default for FocusSpec {
    fn default() -> Self {
        FocusSpec {
            enabled: true,
            margin: default_focus_margin(),
            max_share: default_focus_max_share(),
            scales: default_focus_scales(),
            min_side: default_focus_min_side(),
            agreement: default_focus_agreement(),
            stability: default_focus_stability(),
            edges: default_focus_edges(),
        }
    }
}

impl FocusSpec {
    /// The whole image only, its mask as decoded.
    pub fn off() -> Self {
        FocusSpec {
            enabled: false,
            edges: 0.0,
            ..FocusSpec::default()
        }
    }

    /// Why the settings cannot be used, naming the key under `job.focus`.
    pub fn check(&self) -> Result<(), String> {
        if !(self.margin >= 0.0 && self.margin <= 10.0) {
            return Err("job.focus.margin: must be a number from 0 to 10 (e.g. 0.1)".into());
        }
        if !(self.max_share > 0.0 && self.max_share <= 1.0) {
            return Err("job.focus.max_share: must be a number in (0, 1] (e.g. 0.8)".into());
        }
        if self.scales.len() > MAX_FOCUS_SCALES
            || self.scales.iter().any(|&v| !(v > 0.0 && v < 1.0))
        {
            return Err(format!(
                "job.focus.scales: at most {MAX_FOCUS_SCALES} numbers, each in (0, 1) \
                 (e.g. [0.7, 0.5, 0.35, 0.2])"
            ));
        }
        if !(self.min_side >= 0.0 && self.min_side <= 10.0) {
            return Err("job.focus.min_side: must be a number from 0 to 10 (e.g. 0.6)".into());
        }
        if !(self.agreement >= 0.0 && self.agreement.is_finite()) {
            return Err("job.focus.agreement: must be a number >= 0 (e.g. 1.0)".into());
        }
        if !(self.stability >= 0.0 && self.stability.is_finite()) {
            return Err("job.focus.stability: must be a number >= 0 (e.g. 1.0)".into());
        }
        if !(0.0..=64.0).contains(&self.edges) {
            return Err(
                "job.focus.edges: must be a number of grid cells from 0 (off) to 64 (e.g. 1.5)"
                    .into(),
            );
        }
        Ok(())
    }
}

fn default_focus_margin() -> f32 {
    0.1
}
fn default_focus_max_share() -> f32 {
    0.8
}
fn default_focus_scales() -> Vec<f32> {
    vec![0.7, 0.5, 0.35, 0.2]
}
fn default_focus_min_side() -> f32 {
    0.6
}
fn default_focus_edges() -> f32 {
    1.5
}
fn default_focus_agreement() -> f32 {
    1.0
}
fn default_focus_stability() -> f32 {
    1.0
}

/// The online target model of the propagate job (`decode/target.rs`): per object a logistic regression
/// over the encoder's features, fitted on the reference frame and augmented views of it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// `fused` (default), `rerank`, `target` or `decoder`; see [`TargetMode`].
    #[serde(default)]
    pub mode: TargetMode,
    /// L2 penalty of the regression (larger: smoother, less fitted to the reference frame).
    #[serde(default = "default_target_l2")]
    pub l2: f32,
    /// rerank / fused: weight of a candidate's agreement (IoU with the target model's mask) beside its
    /// match score.
    #[serde(default = "default_target_agreement")]
    pub agreement: f32,
    /// Fit on the reference frame plus its mirror image, a zoom-in and a zoom-out (true) or on the
    /// reference frame alone (false).
    #[serde(default = "yes")]
    pub augment: bool,
    /// fused: weight of the target model's logits added to the chosen query's.
    #[serde(default = "default_target_weight")]
    pub weight: f32,
    /// rerank / fused: weight of a candidate's IoU with the object's mask on the previous frame.
    #[serde(default)]
    pub previous: f32,
    /// Any mode: a candidate smaller than this fraction of the object's mask on the frame before is
    /// passed over for the next (0: off). Objects rarely shrink tenfold from one frame to the next; a
    /// mask that does is mostly a part of the object that matched its memory.
    #[serde(default = "default_target_shrink")]
    pub shrink: f32,
    /// rerank / fused: when no candidate fits (none passed the filters, or each is too small), the
    /// target model's own mask is the object's, as in `target` mode (false: the object is not found).
    #[serde(default = "yes")]
    pub fallback: bool,
    /// Learn online from the tracker's own output every this many frames (0: never).
    #[serde(default)]
    pub update_every: u64,
    /// The space-time memory readout fused with the mask of any mode (`readout.weight: 0` turns it off).
    #[serde(default)]
    pub readout: ReadoutSpec,
}

/// The space-time memory readout of propagate: each feature-grid cell of a frame is compared with the
/// cells near it on remembered frames (the reference, then the last `recent` outputs); its `top_k`
/// affinities, softmaxed at `temperature`, average those cells' object shares into a probability, which
/// is fused with the mode's mask: object where `weight x probability + (1 - weight) x mask > 0.5`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReadoutSpec {
    /// Weight of the readout beside the mode's binary mask, 0..=1 (0: off; 1: the readout alone).
    #[serde(default = "default_readout_weight")]
    pub weight: f32,
    /// Which encoder grid is compared: `fine` (`mask_feat`, stride 4) or `coarse` (`feat8`, stride 8).
    #[serde(default)]
    pub features: ReadoutFeatures,
    /// Output frames remembered beside the reference frame(s), the newest replacing the oldest.
    #[serde(default = "default_readout_recent")]
    pub recent: usize,
    /// Half side of the square window of remembered cells a cell is compared with, in cells.
    #[serde(default = "default_readout_radius")]
    pub radius: usize,
    /// How many of the best affinities vote (1..=64).
    #[serde(default = "default_readout_top_k")]
    pub top_k: usize,
    /// Softmax temperature over the cosine affinities (> 0).
    #[serde(default = "default_readout_temperature")]
    pub temperature: f32,
}

impl Default for ReadoutSpec {
    fn default() -> Self {
        ReadoutSpec {
            weight: default_readout_weight(),
            features: ReadoutFeatures::default(),
            recent: default_readout_recent(),
            radius: default_readout_radius(),
            top_k: default_readout_top_k(),
            temperature: default_readout_temperature(),
        }
    }
}

fn default_readout_weight() -> f32 {
    0.0
}
fn default_readout_recent() -> usize {
    3
}
fn default_readout_radius() -> usize {
    12
}
fn default_readout_top_k() -> usize {
    10
}
fn default_readout_temperature() -> f32 {
    0.05
}

/// The encoder grid the readout compares.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReadoutFeatures {
    /// `mask_feat`, the decoder's per-pixel features (stride 4).
    #[default]
    Fine,
    /// `feat8`, the backbone's stride-8 features.
    Coarse,
}

impl Default for TargetSpec {
    fn default() -> Self {
        TargetSpec {
            mode: TargetMode::default(),
            l2: default_target_l2(),
            agreement: default_target_agreement(),
            augment: true,
            weight: default_target_weight(),
            previous: 0.0,
            shrink: default_target_shrink(),
            fallback: true,
            update_every: 0,
            readout: ReadoutSpec::default(),
        }
    }
}

fn default_target_l2() -> f32 {
    1.0
}
fn default_target_agreement() -> f32 {
    1.0
}
fn default_target_weight() -> f32 {
    1.0
}
fn default_target_shrink() -> f32 {
    0.1
}

/// How the propagate job makes an object's mask on a frame.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TargetMode {
    /// The decoder alone: the query that best matches the object's prompt memory (DINOv).
    Decoder,
    /// The target model alone: its score map is the mask.
    Target,
    /// The decoder's candidates re-ranked by match score plus agreement with the target model.
    Rerank,
    /// As `rerank`, and the mask's logits are the chosen query's plus the target model's.
    #[default]
    Fused,
}

/// How the auto-labeling job finds and classifies instances.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelerSpec {
    /// `proposals` (default) or `generic`; see [`LabelerMode`].
    #[serde(default)]
    pub mode: LabelerMode,
    /// proposals: the point grid's side (the model's `queries.grid` is 20); smaller is faster. On COCO128
    /// (both ways of the split) 10-20 gave the same AP within noise, so the default is the faster 12.
    #[serde(default = "default_labeler_grid")]
    pub grid: usize,
    /// proposals: least predicted IoU of a proposal.
    #[serde(default = "default_proposal_min_iou")]
    pub min_iou: f32,
    /// proposals: a mask overlapping a better proposal's by more than this IoU is dropped.
    #[serde(default = "default_proposal_nms_iou")]
    pub nms_iou: f32,
    /// proposals: most proposals per image.
    #[serde(default = "default_max_proposals")]
    pub max_proposals: usize,
    /// proposals: sharpness of the softmax over the classes' cosine similarities.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// proposals: the similarity a "none of these classes" answer stands at in that softmax.
    #[serde(default = "default_background")]
    pub background: f32,
    /// proposals: classes a proposal may be labeled with (its most probable ones).
    #[serde(default = "default_classes_per_proposal")]
    pub classes_per_proposal: usize,
    /// proposals: detections of one class overlapping a better one by more than this mask IoU are dropped.
    #[serde(default = "default_class_nms_iou")]
    pub class_nms_iou: f32,
}

impl Default for LabelerSpec {
    fn default() -> Self {
        LabelerSpec {
            mode: LabelerMode::default(),
            grid: default_labeler_grid(),
            min_iou: default_proposal_min_iou(),
            nms_iou: default_proposal_nms_iou(),
            max_proposals: default_max_proposals(),
            temperature: default_temperature(),
            background: default_background(),
            classes_per_proposal: default_classes_per_proposal(),
            class_nms_iou: default_class_nms_iou(),
        }
    }
}

fn default_labeler_grid() -> usize {
    12
}
fn default_proposal_min_iou() -> f32 {
    0.3
}
fn default_proposal_nms_iou() -> f32 {
    0.7
}
fn default_max_proposals() -> usize {
    100
}
fn default_temperature() -> f32 {
    10.0
}
fn default_background() -> f32 {
    0.5
}
fn default_classes_per_proposal() -> usize {
    3
}
fn default_class_nms_iou() -> f32 {
    0.5
}

/// Where auto-labeling's instances come from.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LabelerMode {
    /// Class-agnostic proposals (the decoder's generic and point-grid queries, mask NMS), each classified by
    /// its pooled encoder features against the exemplars' (one prototype per class).
    #[default]
    Proposals,
    /// DINOv's generic queries, each matched to the class embeddings of the prompt encoder.
    Generic,
}

/// The score of an auto-labeling detection.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GenericScore {
    /// Class probability `sigmoid(logit_scale * cos + logit_bias)`.
    Class,
    /// Class probability times the query's predicted IoU (mask quality).
    #[default]
    ClassXIou,
}

fn default_exemplars() -> usize {
    16
}
fn default_score_threshold() -> f32 {
    0.05
}
fn default_max_detections() -> usize {
    100
}

fn yes() -> bool {
    true
}
fn default_min_iou() -> f32 {
    0.5
}
fn default_nms_iou() -> f32 {
    0.7
}
fn default_min_area() -> u64 {
    50
}
fn default_memory() -> usize {
    8
}
fn default_memory_min_score() -> f32 {
    0.0
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            kind: JobKind::default(),
            min_iou: default_min_iou(),
            nms_iou: default_nms_iou(),
            min_area: default_min_area(),
            min_score: 0.0,
            memory: default_memory(),
            memory_min_score: default_memory_min_score(),
            prompt_decode: true,
            exemplars_per_class: default_exemplars(),
            seed: 0,
            score_threshold: default_score_threshold(),
            generic_score: GenericScore::default(),
            labeler: LabelerSpec::default(),
            max_detections: default_max_detections(),
            manifest: None,
            target: TargetSpec::default(),
            focus: FocusSpec::default(),
            refine: RefineSpec::default(),
        }
    }
}

/// The job a pipeline runs (`job.kind`, default `propagate`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Video object propagation: objects prompted on reference frames, segmented on every frame.
    #[default]
    Propagate,
    /// Dataset auto-labeling: every instance of the bank's classes in independent images.
    Autolabel,
    /// Cross-image referring: objects marked on reference images (`image:` in the prompt file), looked
    /// for in every image of the source on its own (`job.memory` is 0); resumable and shardable.
    Find,
}

/// One output. Several may be listed; each gets every result.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkSpec {
    /// DAVIS-style palette PNGs, one per frame, named like the frames; pixel value = object id.
    PalettePng {
        /// Folder of the PNGs (made when missing).
        dir: PathBuf,
    },
    /// COCO instances JSON with RLE masks; each frame is an image, each object a category.
    Coco {
        /// The JSON file, written when the run ends.
        path: PathBuf,
    },
    /// JSON Lines: one line per frame with each object's box, score and area.
    Jsonl {
        /// The `.jsonl` file.
        path: PathBuf,
    },
    /// MOTChallenge text: one line per object and frame (frame, id, box, score).
    Mot {
        /// The text file.
        path: PathBuf,
    },
    /// Overlay video (H.264 in MP4).
    Video {
        /// The `.mp4` file, written as `<path>.part.mp4` and renamed when finished.
        path: PathBuf,
        /// Frame rate of the video (default: the source's, else `source.fps`, else 24).
        #[serde(default)]
        fps: Option<f64>,
    },
    /// Overlay PNGs, one per frame.
    OverlayPng {
        /// Folder of the PNGs (made when missing).
        dir: PathBuf,
    },
    /// YOLO-seg label files (`labels/<image>.txt`, one polygon per instance) and `data.yaml`.
    Yolo {
        /// Dataset folder that gets `labels/` and `data.yaml` (made when missing).
        dir: PathBuf,
    },
    /// One PNG grid of a sample of labeled images, for a quick look.
    ContactSheet {
        /// The PNG file.
        path: PathBuf,
        /// Images on the sheet.
        #[serde(default = "default_sheet_count")]
        count: usize,
    },
}

fn default_sheet_count() -> usize {
    16
}

/// How to run: queues, workers, batching, device, threads, error policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Capacity of every queue between stages (items). A full queue blocks the stage before it.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Parallel model workers (encoder + decoder); default `default_workers()`.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Frames per encoder/decoder call (at most).
    #[serde(default = "one_usize")]
    pub batch_size: usize,
    /// Dynamic batching: how long a model worker waits for more frames once it holds one, before it
    /// runs a smaller batch (milliseconds; 0 = take what is queued).
    #[serde(default)]
    pub batch_wait_ms: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[serde(default = "default_device")]
    pub device: String,
    /// ONNX Runtime intra-op threads per worker (0: the machine's cores divided by workers).
    #[serde(default)]
    pub threads: usize,
    /// `skip` (default): report a failed frame in `report.json` and go on; `fail`: the first failed
    /// frame ends the run.
    #[serde(default)]
    pub on_error: OnError,
    /// Give up after this many failed items in a row.
    #[serde(default = "default_max_failures")]
    pub max_consecutive_failures: u64,
    /// Largest frame accepted, in pixels (width x height).
    #[serde(default = "default_max_pixels")]
    pub max_frame_pixels: u64,
}

/// The default number of model workers: 2 on a machine with two or more cores, else 1. Measured on
/// the 2-core development machine (`make demo`, 80 frames of 854x480, BENCHMARKS.md): 2 workers ran
/// 6.2-6.5 frames/s against 3.8-4.8 for 1, the model's calls of one worker overlapping the other's
/// decoding, tracking and writing.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(2)
}

fn default_queue() -> usize {
    8
}
fn one_usize() -> usize {
    1
}
fn default_device() -> String {
    "cpu".into()
}
fn default_max_failures() -> u64 {
    50
}
fn default_max_pixels() -> u64 {
    8192 * 8192
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        RuntimeSpec {
            queue_capacity: default_queue(),
            workers: default_workers(),
            batch_size: 1,
            batch_wait_ms: 0,
            device: default_device(),
            threads: 0,
            on_error: OnError::default(),
            max_consecutive_failures: default_max_failures(),
            max_frame_pixels: default_max_pixels(),
        }
    }
}

/// What a failing item does to the run.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Report the item with its id and go on.
    #[default]
    Skip,
    /// Stop the run (finished results are still written).
    Fail,
}

impl PipelineSpec {
    /// Reads a pipeline file, applies `key.path=value` overrides, resolves relative paths against the
    /// file's folder and checks the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, Error> {
        let err = |msg: String| Error::Spec {
            path: path.to_path_buf(),
            msg,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| err(format!("cannot read the pipeline file: {e}")))?
            .len();
        if len > MAX_PIPELINE_FILE_BYTES {
            return Err(err(format!(
                "the pipeline file is {len} bytes, more than the {MAX_PIPELINE_FILE_BYTES} a pipeline \
                 file may have; is it the right file?"
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read the pipeline file: {e}")))?;
        Self::parse(&text, path, overrides)
    }

    /// As [`PipelineSpec::load`], from text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Self, Error> {
        let err = |msg: String| Error::Spec {
            path: path.to_path_buf(),
            msg,
        };
        let mut spec: PipelineSpec = if overrides.is_empty() {
            serde_yaml_ng::from_str(text).map_err(|e| err(describe_yaml_error(&e)))?
        } else {
            let mut value: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(text).map_err(|e| err(describe_yaml_error(&e)))?;
            for o in overrides {
                apply_override(&mut value, o).map_err(|m| err(format!("--set {o}: {m}")))?;
            }
            serde_yaml_ng::from_value(value).map_err(|e| err(format!("after --set: {e}")))?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        spec.resolve(base);
        spec.check().map_err(err)?;
        Ok(spec)
    }

    fn resolve(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.model);
        if let Some(p) = &mut self.prompts {
            abs(p);
        }
        if let Some(p) = &mut self.bank {
            abs(p);
        }
        if let Some(p) = &mut self.job.manifest {
            abs(p);
        }
        if let Some(p) = &mut self.source.frames {
            abs(p);
        }
        if let Some(v) = &mut self.source.video {
            if !v.contains("://") && Path::new(v.as_str()).is_relative() {
                *v = base.join(v.as_str()).to_string_lossy().into_owned();
            }
        }
        if let Some(v) = &mut self.source.images {
            if Path::new(v.as_str()).is_relative() {
                *v = base.join(v.as_str()).to_string_lossy().into_owned();
            }
        }
        for s in &mut self.sinks {
            match s {
                SinkSpec::PalettePng { dir }
                | SinkSpec::OverlayPng { dir }
                | SinkSpec::Yolo { dir } => abs(dir),
                SinkSpec::Coco { path }
                | SinkSpec::Jsonl { path }
                | SinkSpec::Mot { path }
                | SinkSpec::Video { path, .. }
                | SinkSpec::ContactSheet { path, .. } => abs(path),
            }
        }
    }

    /// Why the spec cannot run, naming the key (`PipelineSpec::parse` calls it; `pipeline::run` calls it
    /// again, for specs built in code).
    pub fn check(&self) -> Result<(), String> {
        let s = &self.source;
        let given = [s.video.is_some(), s.frames.is_some(), s.images.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given != 1 {
            return Err("source: give exactly one of `video`, `frames` or `images`".into());
        }
        if s.stride == 0 {
            return Err("source.stride: must be at least 1".into());
        }
        if let Some(end) = s.end {
            if end <= s.start {
                return Err(format!(
                    "source.end ({end}) must be greater than source.start ({})",
                    s.start
                ));
            }
        }
        if let Some(fps) = s.fps {
            if !(fps > 0.0 && fps.is_finite()) {
                return Err("source.fps: must be a positive number".into());
            }
        }
        if let Some(sh) = &s.shard {
            sh.parse::<Shard>().map_err(|e| format!("source.{e}"))?;
        }
        if s.stall_timeout_ms == 0 {
            return Err("source.stall_timeout_ms: must be at least 1".into());
        }
        if let Some(r) = s.reconnect {
            if s.video.as_deref().is_none_or(|v| !v.contains("://")) {
                return Err(
                    "source.reconnect: only streams (a `video` URL such as rtsp:// or http://) \
                            can reconnect; remove it for files"
                        .into(),
                );
            }
            if r.attempts > 1000 || r.backoff_ms > 60_000 {
                return Err(
                    "source.reconnect: attempts must be at most 1000 and backoff_ms at most 60000"
                        .into(),
                );
            }
        }
        let t = &self.job.target;
        if !(t.l2 > 0.0 && t.l2.is_finite()) {
            return Err("job.target.l2: must be a positive number (e.g. 1.0)".into());
        }
        for (key, v) in [
            ("agreement", t.agreement),
            ("weight", t.weight),
            ("previous", t.previous),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!(
                    "job.target.{key}: must be a number >= 0 (e.g. 1.0)"
                ));
            }
        }
        if !(0.0..1.0).contains(&t.shrink) {
            return Err(
                "job.target.shrink: must be at least 0 (off) and below 1 (e.g. 0.1)".into(),
            );
        }
        let r = &t.readout;
        if !(0.0..=1.0).contains(&r.weight) {
            return Err(
                "job.target.readout.weight: must be between 0 (off) and 1 (e.g. 0.7)".into(),
            );
        }
        if !(r.temperature > 0.0 && r.temperature.is_finite()) {
            return Err(
                "job.target.readout.temperature: must be a positive number (e.g. 0.05)".into(),
            );
        }
        if !(1..=64).contains(&r.top_k) || r.radius > 64 || r.recent > 64 {
            return Err(
                "job.target.readout: top_k must be 1..=64, radius and recent at most 64 (e.g. 10, 12, 3)"
                    .into(),
            );
        }
        self.job.focus.check()?;
        self.job.refine.check()?;
        if self.job.kind == JobKind::Propagate && self.prompts.is_none() {
            return Err(
                "prompts: the propagate job needs a prompt file (objects to follow)".into(),
            );
        }
        if self.job.kind == JobKind::Find && self.prompts.is_none() {
            return Err(
                "prompts: the find job needs a prompt file (objects marked on reference images)"
                    .into(),
            );
        }
        if self.job.kind == JobKind::Autolabel {
            if self.bank.is_none() {
                return Err(
                    "bank: the autolabel job needs a prompt bank (make one with `vprompt bank build`)"
                        .into(),
                );
            }
            if self.prompts.is_some() {
                return Err("prompts: the autolabel job takes a `bank`, not `prompts`".into());
            }
            if self.job.exemplars_per_class == 0 {
                return Err("job.exemplars_per_class: must be at least 1".into());
            }
            if self.job.max_detections == 0
                || self.job.max_detections > crate::decode::generic::MAX_DETECTIONS
            {
                return Err(format!(
                    "job.max_detections: must be 1..={}",
                    crate::decode::generic::MAX_DETECTIONS
                ));
            }
            let l = &self.job.labeler;
            for (key, v) in [
                ("min_iou", l.min_iou),
                ("nms_iou", l.nms_iou),
                ("class_nms_iou", l.class_nms_iou),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(format!("job.labeler.{key}: {v} is outside 0..1"));
                }
            }
            if !(-1.0..=1.0).contains(&l.background) {
                return Err(format!(
                    "job.labeler.background: {} is outside -1..1 (a cosine similarity; -1 turns it off)",
                    l.background
                ));
            }
            if !(l.temperature > 0.0 && l.temperature <= 1000.0) {
                return Err(format!(
                    "job.labeler.temperature: {} must be in (0, 1000] (e.g. 10)",
                    l.temperature
                ));
            }
            if l.max_proposals == 0 || l.max_proposals > 10_000 {
                return Err("job.labeler.max_proposals: must be 1..=10000".into());
            }
            if l.classes_per_proposal == 0 {
                return Err("job.labeler.classes_per_proposal: must be at least 1".into());
            }
            if l.grid == 0 || l.grid > 64 {
                return Err("job.labeler.grid: must be 1..=64 points per side".into());
            }
            if self
                .sinks
                .iter()
                .any(|s| matches!(s, SinkSpec::Video { .. }))
            {
                return Err(
                    "sinks: `video` is for videos; autolabel writes coco, yolo, jsonl, overlay_png, palette_png and contact_sheet"
                        .into(),
                );
            }
        }
        for (name, v) in [
            ("job.min_iou", self.job.min_iou),
            ("job.nms_iou", self.job.nms_iou),
            ("job.min_score", self.job.min_score),
            ("job.memory_min_score", self.job.memory_min_score),
            ("job.score_threshold", self.job.score_threshold),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name}: {v} is outside 0..1"));
            }
        }
        let r = &self.runtime;
        if r.queue_capacity == 0 || r.queue_capacity > 4096 {
            return Err("runtime.queue_capacity: must be 1..=4096".into());
        }
        if r.workers == 0 || r.workers > 64 {
            return Err("runtime.workers: must be 1..=64".into());
        }
        if r.batch_size == 0 || r.batch_size > 256 {
            return Err("runtime.batch_size: must be 1..=256".into());
        }
        if r.batch_wait_ms > 10_000 {
            return Err("runtime.batch_wait_ms: at most 10000".into());
        }
        if r.max_consecutive_failures == 0 {
            return Err("runtime.max_consecutive_failures: must be at least 1".into());
        }
        if r.max_frame_pixels == 0 {
            return Err("runtime.max_frame_pixels: must be at least 1".into());
        }
        r.device
            .parse::<crate::model::Device>()
            .map_err(|e| format!("runtime.device: {e}"))?;
        if self.sinks.is_empty() {
            return Err(
                "sinks: list at least one output (palette_png, coco, jsonl, mot, video, overlay_png, yolo, contact_sheet)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// serde_yaml_ng's message already names the key path and line/column; add the allowed keys' hint.
fn describe_yaml_error(e: &serde_yaml_ng::Error) -> String {
    let mut msg = e.to_string();
    if msg.contains("unknown field") {
        msg.push_str(" (see the YAML reference in README.md)");
    }
    msg
}

/// `a.b.c=value`: sets a key in the YAML tree; the value is parsed as YAML (so numbers stay numbers).
/// A numeric segment indexes a list (`sinks.0.dir=out`).
fn apply_override(root: &mut serde_yaml_ng::Value, o: &str) -> Result<(), String> {
    use serde_yaml_ng::Value;
    let (key, raw) = o.split_once('=').ok_or("expected key.path=value")?;
    let value: Value = serde_yaml_ng::from_str(raw).map_err(|e| format!("value: {e}"))?;
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("empty key segment".into());
    }
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        cur = match cur {
            Value::Sequence(seq) => {
                let idx: usize = part
                    .parse()
                    .map_err(|_| format!("`{part}` must be a list index here"))?;
                let len = seq.len();
                seq.get_mut(idx)
                    .ok_or_else(|| format!("index {idx} is out of range (the list has {len})"))?
            }
            Value::Mapping(map) => {
                let k = Value::String(part.to_string());
                if !map.contains_key(&k) {
                    map.insert(
                        k.clone(),
                        if last {
                            Value::Null
                        } else {
                            Value::Mapping(Default::default())
                        },
                    );
                }
                map.get_mut(&k).ok_or("unreachable")?
            }
            Value::Null => {
                *cur = Value::Mapping(Default::default());
                let Value::Mapping(map) = cur else {
                    unreachable!()
                };
                map.entry(Value::String(part.to_string()))
                    .or_insert(Value::Null)
            }
            _ => {
                return Err(format!(
                    "`{}` is not a mapping or list",
                    parts[..i].join(".")
                ))
            }
        };
    }
    *cur = value;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "source: { frames: f }\nmodel: m\nprompts: p.yaml\nsinks:\n  - { kind: jsonl, path: out/r.jsonl }\n";

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let s = PipelineSpec::parse(MIN, Path::new("dir/pipe.yaml"), &[]).unwrap();
        assert_eq!(s.model, Path::new("dir/m"));
        assert_eq!(s.source.frames.as_deref(), Some(Path::new("dir/f")));
        match &s.sinks[0] {
            SinkSpec::Jsonl { path } => assert_eq!(path, Path::new("dir/out/r.jsonl")),
            other => panic!("unexpected sink {other:?}"),
        }
        assert_eq!(s.runtime.queue_capacity, 8);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = format!("{MIN}runtime:\n  queue_capacty: 3\n");
        let e = PipelineSpec::parse(&text, Path::new("p.yaml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `queue_capacty`"), "{e}");
        assert!(e.contains("line 7"), "{e}");
        assert!(e.starts_with("p.yaml:"), "{e}");
    }

    #[test]
    fn overrides_set_nested_keys_and_list_items() {
        let s = PipelineSpec::parse(
            MIN,
            Path::new("p.yaml"),
            &[
                "runtime.workers=3".into(),
                "sinks.0.path=/x.jsonl".into(),
                "job.min_iou=0.25".into(),
                "job.prompt_decode=false".into(),
            ],
        )
        .unwrap();
        assert_eq!(s.runtime.workers, 3);
        assert_eq!(s.job.min_iou, 0.25);
        assert!(!s.job.prompt_decode);
        assert!(
            PipelineSpec::parse(MIN, Path::new("p.yaml"), &[])
                .unwrap()
                .job
                .prompt_decode
        );
        match &s.sinks[0] {
            SinkSpec::Jsonl { path } => assert_eq!(path, Path::new("/x.jsonl")),
            other => panic!("unexpected sink {other:?}"),
        }
        let e =
            PipelineSpec::parse(MIN, Path::new("p.yaml"), &["sinks.4.path=x".into()]).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn checks_name_the_key() {
        let two = MIN.replace("{ frames: f }", "{ frames: f, video: v.mp4 }");
        let e = PipelineSpec::parse(&two, Path::new("p.yaml"), &[]).unwrap_err();
        assert!(e.to_string().contains("exactly one of"), "{e}");
        let e = PipelineSpec::parse(MIN, Path::new("p.yaml"), &["runtime.device=tpu".into()])
            .unwrap_err();
        assert!(e.to_string().contains("runtime.device"), "{e}");
        let bad_sink = MIN.replace("kind: jsonl", "kind: gif");
        let e = PipelineSpec::parse(&bad_sink, Path::new("p.yaml"), &[]).unwrap_err();
        assert!(e.to_string().contains("unknown variant `gif`"), "{e}");
        for (set, key) in [
            ("job.target.readout.weight=1.5", "readout.weight"),
            ("job.target.readout.temperature=0", "readout.temperature"),
            ("job.target.readout.top_k=0", "top_k"),
            ("job.target.shrink=1", "job.target.shrink"),
            ("job.target.shrink=-0.1", "job.target.shrink"),
            ("job.refine.radius=0", "job.refine.radius"),
            ("job.focus.edges=-1", "job.focus.edges"),
            ("job.refine.eps=-1", "job.refine.eps"),
            ("job.refine.threshold=1", "job.refine.threshold"),
        ] {
            let e = PipelineSpec::parse(MIN, Path::new("p.yaml"), &[set.into()]).unwrap_err();
            assert!(e.to_string().contains(key), "{set}: {e}");
        }
        let ok = PipelineSpec::parse(
            MIN,
            Path::new("p.yaml"),
            &["job.target.readout.weight=0.7".into()],
        )
        .unwrap();
        assert_eq!(ok.job.target.readout.weight, 0.7);
        // Refinement is on by default; 4.5 cells are 24 pixels on a 427-pixel-wide frame at 320.
        assert!(ok.job.refine.enabled);
        assert_eq!(ok.job.refine.radius_px(427, 320), 24);
        assert_eq!(ok.job.refine.radius_px(854, 320), 48);
    }
}
