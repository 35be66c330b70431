//! The propagate job's per-frame step: start objects on their reference frames (prompts decoded where
//! they are: `reference.rs`), match every object's memory against the frame's interactive queries, make
//! masks for the winners only, give each pixel to one object, and write confident predictions back into
//! the memories.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use image::RgbImage;

use super::readout::{FrameCells, Readout};
use super::reference::reference_mask;
use super::referring::{candidates, dot, rank};
use super::target::{augmented_frames, augmented_masks, TargetModel, View};
use crate::error::{Error, Result};
use crate::model::{Features, Letterbox, Model, Preprocessor, Queries, Tensor};
use crate::post::guided::{block_for, guided_filter};
use crate::post::mask::{frame_logits, grid_masks, input_logits, mask_to_input, resize_plane};
use crate::post::BinaryMask;
use crate::prompt::raster::rasterize;
use crate::prompt::{ObjectMemory, ObjectPrompt, PromptFile};
use crate::spec::{JobSpec, RefineSpec, TargetMode};

/// How many ranked queries are tried for an object before it is declared not found on a frame
/// (a winner whose mask is at most `min_area` pixels gives way to the next).
const TRIES: usize = 5;

/// How many of the best-matching queries the target model re-ranks (`rerank`, `fused`).
const RERANK: usize = 32;

/// Recent frames a target model keeps learning from (`target.update_every`), and the weight of each
/// beside the reference views.
const RECENT: usize = 4;
const RECENT_WEIGHT: f32 = 0.5;

/// A prediction is learnt from only when its mask and the target model's overlap by this IoU.
const UPDATE_AGREEMENT: f64 = 0.8;

/// The masks (logit > 0) of the queries re-ranked on a frame, on the feature grid `width` cells wide.
struct QueryMasks {
    width: usize,
    masks: HashMap<usize, Vec<bool>>,
}

/// One object's result on one frame.
#[derive(Debug, Clone)]
pub struct ObjectResult {
    /// Palette index in label images: the object id (propagate) or the instance number (autolabel).
    pub id: u8,
    /// COCO category: the object id (propagate) or the bank class id (autolabel).
    pub category: u32,
    /// The object's pixels on the frame (empty when it was not found).
    pub mask: BinaryMask,
    /// Match score of the chosen query: cosine similarity of its embedding to the object's memory,
    /// clamped to [0, 1] (1 on a reference frame, where the output is the reference mask; 0 when not
    /// found).
    pub score: f32,
    /// The chosen query's predicted IoU (mask quality): on a reference frame the decoded prompt's
    /// (1 for a mask prompt).
    pub pred_iou: f32,
    /// Pixels in `mask`.
    pub area: u64,
    /// Tight box in frame pixels, `xyxy`, `None` when the mask is empty.
    pub box_xyxy: Option<[u32; 4]>,
}

/// All objects on one frame, with one id per pixel.
#[derive(Debug, Clone)]
pub struct FrameObjects {
    /// Frame width, in pixels.
    pub width: u32,
    /// Frame height, in pixels.
    pub height: u32,
    /// Object id per pixel (0 = background).
    pub labels: Vec<u8>,
    /// The frame's results, one per object (propagate) or detection (autolabel).
    pub objects: Vec<ObjectResult>,
}

/// Per object on one frame: id, frame logits (`None` = not found), (score, predicted IoU), model-input
/// mask for the memory.
type Found = (u8, Option<Vec<f32>>, (f32, f32), Option<Vec<f32>>);

/// Follows the objects of a prompt file through a sequence of frames, in order.
pub struct Tracker {
    model: Arc<Model>,
    job: JobSpec,
    prompts: PromptFile,
    memories: BTreeMap<u8, ObjectMemory>,
    /// Per object its target model (none in `decoder` mode, or where the reference had no certain
    /// object or background cell).
    targets: BTreeMap<u8, TargetModel>,
    /// Letterboxes the augmented views of reference frames.
    pre: Preprocessor,
    /// Per object its mask on the previous frame, on the feature grid (for `target.previous`).
    previous: BTreeMap<u8, Vec<bool>>,
    /// Per object its mask's area (frame pixels) on the frame before, where it was found (for
    /// `target.shrink`).
    areas: BTreeMap<u8, u64>,
    /// Per object its readout memory (with `target.readout.weight` > 0).
    readouts: BTreeMap<u8, Readout>,
    /// The source index of the last frame stepped.
    last: Option<u64>,
}

impl Tracker {
    /// A tracker for the objects of `prompts`, with `job`'s thresholds; each object starts on its
    /// reference frame, when [`Tracker::step`] reaches it.
    pub fn new(model: Arc<Model>, job: JobSpec, prompts: PromptFile) -> Self {
        Tracker {
            pre: Preprocessor::new(&model.spec.input),
            model,
            job,
            prompts,
            memories: BTreeMap::new(),
            targets: BTreeMap::new(),
            previous: BTreeMap::new(),
            areas: BTreeMap::new(),
            readouts: BTreeMap::new(),
            last: None,
        }
    }

    /// The prompt file it follows.
    pub fn prompts(&self) -> &PromptFile {
        &self.prompts
    }

    /// `(id, frame)` of the prompts (first prompts and corrections) whose frame has not been stepped yet.
    pub fn waiting(&self) -> Vec<(u8, u64)> {
        self.prompts
            .objects
            .iter()
            .filter(|o| !o.absent && o.image.is_none() && self.last.is_none_or(|l| o.frame > l))
            .map(|o| (o.id, o.frame))
            .collect()
    }

    /// The frame of the object's latest prompt at or before `index` (0 when there is none).
    fn anchored_at(&self, id: u8, index: u64) -> u64 {
        self.prompts
            .objects
            .iter()
            .filter(|o| o.id == id && !o.absent && o.frame <= index)
            .map(|o| o.frame)
            .max()
            .unwrap_or(0)
    }

    /// Processes the frame with source index `index` (frames must come in order).
    pub fn step(
        &mut self,
        index: u64,
        frame: &RgbImage,
        lb: &Letterbox,
        feats: &Features,
        queries: &Queries,
    ) -> Result<FrameObjects> {
        let (w, h) = (lb.frame_w, lb.frame_h);
        let mask_feat = feats
            .get(crate::model::contract::names::MASK_FEAT)
            .ok_or_else(|| Error::Runtime("the encoder gave no `mask_feat`".into()))?;
        let size = self.model.input_size();
        let s2 = (size * size) as usize;

        if self.last.is_none() {
            self.anchor_images()?;
        }
        self.last = Some(index);
        // Objects that leave here: no output, memory or target model until their next prompt.
        for o in self
            .prompts
            .objects
            .iter()
            .filter(|o| o.frame == index && o.absent)
        {
            self.memories.remove(&o.id);
            self.targets.remove(&o.id);
            self.previous.remove(&o.id);
            self.areas.remove(&o.id);
            self.readouts.remove(&o.id);
        }
        // Objects starting here, or corrected here (re-anchored: a new memory pinned on the correction,
        // the target model refitted): their reference masks (the given mask, the decoded prompt, or with
        // `prompt_decode: false` the rasterised prompt), whose embeddings are pinned.
        let starting: Vec<_> = self
            .prompts
            .objects
            .iter()
            .filter(|o| o.frame == index && !o.absent && o.image.is_none())
            .cloned()
            .collect();
        for o in &starting {
            self.previous.remove(&o.id);
            self.areas.remove(&o.id);
        }
        // Reference masks that are this frame's output, with their predicted IoU.
        let given = if starting.is_empty() {
            BTreeMap::new()
        } else {
            self.anchor(&starting, frame, lb, feats, false)?
        };

        let cands = candidates(
            queries,
            &self.model.spec.queries,
            self.job.min_iou,
            self.job.nms_iou,
        );
        let scale = self.model.spec.classifier.logit_scale;
        // Per object re-ranked by its target model, its best-matching queries; the grid masks of all of
        // them are made in one pass.
        let shortlists: BTreeMap<u8, Vec<usize>> = match self.job.target.mode {
            TargetMode::Rerank | TargetMode::Fused => self
                .memories
                .iter()
                .filter(|(id, _)| self.targets.contains_key(id) && !given.contains_key(id))
                .map(|(&id, m)| {
                    let best = rank(queries, &cands, &m.lookup(), scale)
                        .into_iter()
                        .take(RERANK)
                        .map(|(q, _)| q);
                    (id, best.collect())
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let mut reranked: Vec<usize> = shortlists.values().flatten().copied().collect();
        reranked.sort_unstable();
        reranked.dedup();
        let rows: Vec<&[f32]> = reranked.iter().map(|&q| queries.mask_row(q)).collect();
        let query_masks = QueryMasks {
            width: mask_feat.shape[3],
            masks: reranked
                .iter()
                .copied()
                .zip(grid_masks(mask_feat, &rows))
                .collect(),
        };
        let mut found: Vec<Found> = Vec::new();
        // (object, model-input mask) of the predictions the target models learn from.
        let mut learn: Vec<(u8, Vec<f32>)> = Vec::new();
        // The frame on the readouts' grid, made once for all of them.
        let cells = if self.readouts.is_empty() {
            None
        } else {
            Some(FrameCells::of(self.job.target.readout.features, feats, lb)?)
        };
        // (object, model-input mask or none when not found) of the outputs the readouts remember.
        let mut read_back: Vec<(u8, Option<Vec<f32>>)> = Vec::new();
        for (&id, memory) in &self.memories {
            if let Some((m, pred_iou)) = given.get(&id) {
                // A reference mask wins its pixels over any prediction.
                let logits = m
                    .data
                    .iter()
                    .map(|&v| if v != 0 { f32::MAX } else { -1.0 })
                    .collect();
                found.push((id, Some(logits), (1.0, *pred_iou), None));
                let area = m.data.iter().filter(|&&v| v != 0).count() as u64;
                self.areas.insert(id, area);
                continue;
            }
            let prompt = memory.lookup();
            let target = match self.targets.get(&id) {
                Some(t) => Some(t.scores(feats)?),
                None => None,
            };
            // The target model's mask on the grid: what candidates are re-ranked by, and what a
            // prediction must agree with to be learnt from.
            let target_grid: Option<Vec<bool>> = target
                .as_ref()
                .map(|(cells, _, _)| cells.iter().map(|&v| v > 0.0).collect());
            let min_area = area_floor(&self.job, self.areas.get(&id).copied());
            let fit = (&self.job, min_area);
            let pick = match (self.job.target.mode, target) {
                (TargetMode::Decoder, _) | (_, None) => {
                    let ranked = rank(queries, &cands, &prompt, scale);
                    let order: Vec<usize> = ranked.iter().map(|&(q, _)| q).collect();
                    first_fit(fit, &order, &prompt, queries, mask_feat, lb, None)
                }
                (TargetMode::Target, Some((cells, gw, gh))) => {
                    target_pick((&cells, gw, gh), size, lb, min_area)
                }
                (mode, Some((cells, gw, gh))) => {
                    let prev = self.previous.get(&id).map(|p| p.as_slice());
                    let shortlist = shortlists.get(&id).map_or(&[][..], |v| v.as_slice());
                    let target = target_grid.as_deref().unwrap_or(&[]);
                    let order =
                        self.rerank(shortlist, &prompt, queries, &query_masks, lb, target, prev);
                    let fuse = (mode == TargetMode::Fused).then(|| {
                        let wt = self.job.target.weight;
                        let mut il = resize_plane(&cells, gw, gw, gh, size as usize, size as usize);
                        il.iter_mut().for_each(|v| *v *= wt);
                        il
                    });
                    first_fit(
                        fit,
                        &order,
                        &prompt,
                        queries,
                        mask_feat,
                        lb,
                        fuse.as_deref(),
                    )
                    .or_else(|| match self.job.target.fallback {
                        true => target_pick((&cells, gw, gh), size, lb, min_area),
                        false => None,
                    })
                }
            };
            let pick = match (self.readouts.get(&id), &cells) {
                (Some(r), Some(cells)) => {
                    let fused = self.readout_pick(r, pick, cells, lb)?;
                    read_back.push((id, fused.as_ref().map(|p| input_mask(&p.2, lb))));
                    fused
                }
                _ => pick,
            };
            match pick {
                Some((fl, scores, il)) => {
                    let remember = scores.0 >= self.job.memory_min_score;
                    let input_mask = remember.then(|| input_mask(&il, lb));
                    let (gw, gh) = (mask_feat.shape[3], mask_feat.shape[2]);
                    let due = update_due(
                        self.job.target.update_every,
                        self.anchored_at(id, index),
                        index,
                    );
                    // The mask on the grid only where something reads it: the next frame's prior, or
                    // an update.
                    let grid = (self.job.target.previous > 0.0 || (due && input_mask.is_some()))
                        .then(|| grid_cells(&il, lb, gw, gh));
                    if let (Some(m), Some(g), Some(t)) = (&input_mask, &grid, &target_grid) {
                        // Only predictions the target model already agrees with: learning from the
                        // decoder's mistakes makes the model drift onto them.
                        if due && grid_iou(g, t, lb, gw) >= UPDATE_AGREEMENT {
                            learn.push((id, m.clone()));
                        }
                    }
                    match grid.filter(|_| self.job.target.previous > 0.0) {
                        Some(g) => self.previous.insert(id, g),
                        None => self.previous.remove(&id),
                    };
                    let area = fl.iter().filter(|&&v| v > 0.0).count() as u64;
                    self.areas.insert(id, area);
                    found.push((id, Some(fl), scores, input_mask));
                }
                None => {
                    self.previous.remove(&id);
                    self.areas.remove(&id);
                    found.push((id, None, (0.0, 0.0), None));
                }
            }
        }
        if let Some(cells) = &cells {
            for (id, m) in read_back {
                if let Some(r) = self.readouts.get_mut(&id) {
                    let empty;
                    let m = match &m {
                        Some(m) => m.as_slice(),
                        None => {
                            empty = vec![0.0f32; s2];
                            &empty
                        }
                    };
                    r.remember(cells, m)?;
                }
            }
        }
        for (id, m) in learn {
            if let Some(t) = self.targets.get_mut(&id) {
                let view = View {
                    feats,
                    input_mask: &m,
                    lb,
                };
                t.update(&view, self.job.target.l2, RECENT, RECENT_WEIGHT)?;
            }
        }

        let mut labels = owners(&found, (w * h) as usize);
        if self.job.refine.enabled {
            let ids: Vec<u8> = found.iter().map(|f| f.0).collect();
            let r = self.job.refine.radius_px(w.max(h), size);
            // Reference masks (given, or decoded from the prompt on its own image) stay as they are.
            let references: Vec<u8> = given.keys().copied().collect();
            labels = refined_labels(frame, &labels, &ids, &references, &self.job.refine, r);
        }
        let objects = found
            .iter()
            .map(|(id, _, (score, pred_iou), _)| {
                let mask = BinaryMask {
                    width: w,
                    height: h,
                    data: labels.iter().map(|&l| (l == *id) as u8).collect(),
                };
                let area = mask.area();
                ObjectResult {
                    id: *id,
                    category: *id as u32,
                    box_xyxy: mask.bbox_xyxy(),
                    score: if area > 0 { *score } else { 0.0 },
                    pred_iou: if area > 0 { *pred_iou } else { 0.0 },
                    area,
                    mask,
                }
            })
            .collect();

        // Confident predictions re-encoded as prompts on this frame.
        let updates: Vec<(u8, Vec<f32>)> = found
            .into_iter()
            .filter_map(|(id, _, _, m)| m.map(|m| (id, m)))
            .collect();
        if !updates.is_empty() {
            let mut data = Vec::with_capacity(updates.len() * s2);
            for (_, m) in &updates {
                data.extend_from_slice(m);
            }
            let t = Tensor::new(vec![updates.len(), 1, size as usize, size as usize], data);
            let embeds = self.model.encode_prompts(feats, &t)?;
            for ((id, _), e) in updates.iter().zip(embeds) {
                if let Some(mem) = self.memories.get_mut(id) {
                    mem.remember(e);
                }
            }
        }
        Ok(FrameObjects {
            width: w,
            height: h,
            labels,
            objects,
        })
    }
}

impl Tracker {
    /// Anchors objects prompted on one image (`prompts`, all on `image`): their reference masks (the
    /// given mask, the decoded prompt, or with `prompt_decode: false` the rasterised prompt), each
    /// object's target model fitted on it, and its embedding pinned: in a new memory (a start or a
    /// correction), or beside the others with `add` (several reference images). Returns the reference
    /// masks that are the image's output, with their predicted IoU.
    fn anchor(
        &mut self,
        prompts: &[ObjectPrompt],
        image: &RgbImage,
        lb: &Letterbox,
        feats: &Features,
        add: bool,
    ) -> Result<BTreeMap<u8, (BinaryMask, f32)>> {
        let (w, h) = (lb.frame_w, lb.frame_h);
        let size = self.model.input_size() as usize;
        let mut given = BTreeMap::new();
        let mut masks = Vec::with_capacity(prompts.len() * size * size);
        let aug = self.encode_views(image)?;
        // The image on the readouts' grid, once for all its objects.
        let readout = self.job.target.readout;
        let cells = if readout.weight > 0.0 {
            Some(FrameCells::of(readout.features, feats, lb)?)
        } else {
            None
        };
        for o in prompts {
            let at = o.image.as_ref().map_or(format!("frame {}", o.frame), |p| {
                format!("reference image {}", p.display())
            });
            // Rasterising also checks every coordinate of the prompt against the image.
            let mut m = rasterize(o, w, h)?;
            if o.is_mask_only() {
                given.insert(o.id, (m.clone(), 1.0));
            } else if self.job.prompt_decode && o.mask.is_none() {
                match reference_mask(
                    &self.model,
                    &mut self.pre,
                    image,
                    feats,
                    lb,
                    o,
                    &self.job.focus,
                )? {
                    Some(c) => {
                        if !c.fits {
                            tracing::warn!(
                                "object {} on {at}: no candidate mask holds every point of the prompt; \
                                 the best-scored one is used",
                                o.id
                            );
                        }
                        m = c.mask;
                        given.insert(o.id, (m.clone(), c.pred_iou));
                    }
                    None => tracing::warn!(
                        "object {} on {at}: every candidate mask of the prompt is empty; the rasterised \
                         prompt is used",
                        o.id
                    ),
                }
            }
            let input_mask = mask_to_input(&m, lb);
            let first_reference = !(add && self.memories.contains_key(&o.id));
            if self.job.target.mode != TargetMode::Decoder && first_reference {
                self.fit_target(o.id, o.frame, &m, feats, lb, &input_mask, &aug)?;
            }
            if let Some(cells) = &cells {
                match self.readouts.get_mut(&o.id) {
                    Some(r) if !first_reference => r.pin(cells, &input_mask)?,
                    _ => {
                        let r = Readout::new(self.job.target.readout, cells, &input_mask);
                        self.readouts.insert(o.id, r);
                    }
                }
            }
            masks.extend(input_mask);
        }
        let t = Tensor::new(vec![prompts.len(), 1, size, size], masks);
        let embeds = self.model.encode_prompts(feats, &t)?;
        for (o, e) in prompts.iter().zip(embeds) {
            match self.memories.get_mut(&o.id) {
                Some(m) if add => m.pin(e),
                _ => {
                    self.memories
                        .insert(o.id, ObjectMemory::new(e, self.job.memory));
                }
            }
        }
        Ok(given)
    }

    /// Objects prompted on reference images outside the source: each image read and encoded once, its
    /// objects anchored, nothing of it in the outputs.
    fn anchor_images(&mut self) -> Result<()> {
        let mut images: Vec<std::path::PathBuf> = self
            .prompts
            .objects
            .iter()
            .filter_map(|o| o.image.clone())
            .collect();
        images.sort();
        images.dedup();
        for path in images {
            let img = crate::source::read_rgb(
                &path,
                crate::spec::RuntimeSpec::default().max_frame_pixels,
            )?;
            let s = self.pre.size() as usize;
            let mut input = vec![0.0f32; 3 * s * s];
            let lb = self.pre.fill(&img, &mut input);
            let feats = self
                .model
                .encode(&Tensor::new(vec![1, 3, s, s], input))?
                .pop()
                .ok_or_else(|| Error::Runtime("the encoder returned no item".into()))?;
            let prompts: Vec<ObjectPrompt> = self
                .prompts
                .objects
                .iter()
                .filter(|o| o.image.as_ref() == Some(&path))
                .cloned()
                .collect();
            self.anchor(&prompts, &img, &lb, &feats, true)?;
        }
        Ok(())
    }

    /// The augmented views of a reference frame (`target::augmented_frames`), encoded in one batch:
    /// their features and letterboxes. None without `target.augment` or in `decoder` mode.
    fn encode_views(&mut self, frame: &RgbImage) -> Result<Vec<(Features, Letterbox)>> {
        if !self.job.target.augment || self.job.target.mode == TargetMode::Decoder {
            return Ok(vec![]);
        }
        let frames = augmented_frames(frame);
        let s = self.pre.size() as usize;
        let per = 3 * s * s;
        let mut data = vec![0.0f32; per * frames.len()];
        let boxes: Vec<Letterbox> = frames
            .iter()
            .enumerate()
            .map(|(i, img)| self.pre.fill(img, &mut data[i * per..(i + 1) * per]))
            .collect();
        let feats = self
            .model
            .encode(&Tensor::new(vec![frames.len(), 3, s, s], data))?;
        Ok(feats.into_iter().zip(boxes).collect())
    }

    /// Fits object `id`'s target model on its reference frame (mask `m`, model-input mask `input_mask`)
    /// and on the frame's encoded augmented views, if any.
    #[allow(clippy::too_many_arguments)]
    fn fit_target(
        &mut self,
        id: u8,
        at: u64,
        m: &BinaryMask,
        feats: &Features,
        lb: &Letterbox,
        input_mask: &[f32],
        aug: &[(Features, Letterbox)],
    ) -> Result<()> {
        let masks: Vec<Vec<f32>> = if aug.is_empty() {
            vec![]
        } else {
            augmented_masks(m)
                .iter()
                .zip(aug)
                .map(|(vm, (_, vlb))| mask_to_input(vm, vlb))
                .collect()
        };
        let mut views = vec![View {
            feats,
            input_mask,
            lb,
        }];
        for ((f, vlb), im) in aug.iter().zip(&masks) {
            views.push(View {
                feats: f,
                input_mask: im,
                lb: vlb,
            });
        }
        let learns = self.job.target.update_every > 0;
        match TargetModel::fit(&views, self.job.target.l2, learns)? {
            Some(t) => {
                self.targets.insert(id, t);
            }
            None => {
                // A correction's stale model must not outlive it.
                self.targets.remove(&id);
                tracing::warn!(
                    "object {id} on frame {at}: its mask leaves no certain object or background cell \
                     of the feature grid; it is followed by the decoder alone"
                )
            }
        }
        Ok(())
    }

    /// The object's shortlist (its best-matching `RERANK` queries) in the order the target model
    /// prefers: match score plus `agreement` x the IoU of a query's mask with the target model's mask
    /// `target` on the feature grid (inside the letterboxed frame), plus `previous` x its IoU with the
    /// object's previous mask.
    #[allow(clippy::too_many_arguments)]
    fn rerank(
        &self,
        shortlist: &[usize],
        prompt: &[f32],
        queries: &Queries,
        query_masks: &QueryMasks,
        lb: &Letterbox,
        target: &[bool],
        prev: Option<&[bool]>,
    ) -> Vec<usize> {
        let gw = query_masks.width;
        let t = &self.job.target;
        let mut scored: Vec<(usize, f32)> = shortlist
            .iter()
            .filter_map(|&q| {
                let mask = query_masks.masks.get(&q)?;
                let mut score = dot(queries.embed_row(q), prompt).clamp(0.0, 1.0);
                score += t.agreement * grid_iou(mask, target, lb, gw) as f32;
                if let Some(p) = prev.filter(|_| t.previous > 0.0) {
                    score += t.previous * grid_iou(mask, p, lb, gw) as f32;
                }
                Some((q, score))
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.into_iter().map(|(q, _)| q).collect()
    }

    /// An object's pick fused with its readout: object where `weight x readout + (1 - weight) x pick's
    /// mask > 0.5` (the pick's logits become that sum minus 0.5). The pick's scores are kept; with no
    /// pick, the readout alone may find the object, scored by its mean probability inside the mask.
    #[allow(clippy::type_complexity)]
    fn readout_pick(
        &self,
        readout: &Readout,
        pick: Option<(Vec<f32>, (f32, f32), Vec<f32>)>,
        cells: &FrameCells,
        lb: &Letterbox,
    ) -> Result<Option<(Vec<f32>, (f32, f32), Vec<f32>)>> {
        let w = self.job.target.readout.weight;
        let plane = readout.read(cells)?;
        let (scores, il) = match pick {
            Some((_, scores, il)) => (Some(scores), il),
            None => (None, vec![f32::MIN; plane.len()]),
        };
        let fused = fuse_readout(&plane, &il, w);
        let fl = frame_logits(&fused, lb);
        let area = fl.iter().filter(|&&v| v > 0.0).count() as u64;
        if area <= self.job.min_area {
            return Ok(None);
        }
        let scores = scores.unwrap_or_else(|| {
            let (sum, n) = plane
                .iter()
                .zip(&fused)
                .filter(|(_, &f)| f > 0.0)
                .fold((0.0f32, 0u32), |(s, n), (&p, _)| (s + p, n + 1));
            let conf = if n > 0 { sum / n as f32 } else { 0.0 };
            (conf, conf)
        });
        Ok(Some((fl, scores, fused)))
    }
}

/// The first of `order` (tried up to `TRIES`) whose mask is larger than `min_area` pixels: its frame
/// logits, (match score, predicted IoU) and model-input logits; with `fuse`, the target model's
/// model-input logits are added to the query's. Queries whose match score is below `job.min_score` are
/// passed over.
#[allow(clippy::type_complexity)]
fn first_fit(
    (job, min_area): (&JobSpec, u64),
    order: &[usize],
    prompt: &[f32],
    queries: &Queries,
    mask_feat: &Tensor,
    lb: &Letterbox,
    fuse: Option<&[f32]>,
) -> Option<(Vec<f32>, (f32, f32), Vec<f32>)> {
    let size = lb.size;
    for &q in order.iter().take(TRIES) {
        let score = dot(queries.embed_row(q), prompt).clamp(0.0, 1.0);
        if score < job.min_score {
            continue;
        }
        let mut il = input_logits(mask_feat, queries.mask_row(q), size);
        if let Some(t) = fuse {
            il.iter_mut().zip(t).for_each(|(a, b)| *a += b);
        }
        let fl = frame_logits(&il, lb);
        let area = fl.iter().filter(|&&v| v > 0.0).count() as u64;
        if area > min_area {
            return Some((fl, (score, queries.iou[q]), il));
        }
    }
    None
}

/// The target model's score map `(cells, gw, gh)` as the object's mask when it is larger than
/// `min_area` pixels: frame logits, (confidence, confidence) with the confidence its mean probability
/// inside the mask, and model-input logits.
#[allow(clippy::type_complexity)]
fn target_pick(
    (cells, gw, gh): (&[f32], usize, usize),
    size: u32,
    lb: &Letterbox,
    min_area: u64,
) -> Option<(Vec<f32>, (f32, f32), Vec<f32>)> {
    let il = resize_plane(cells, gw, gw, gh, size as usize, size as usize);
    let fl = frame_logits(&il, lb);
    let inside: Vec<f32> = fl.iter().copied().filter(|&v| v > 0.0).collect();
    (inside.len() as u64 > min_area).then(|| {
        let conf = inside.iter().map(|&v| sigmoid(v)).sum::<f32>() / inside.len() as f32;
        (fl, (conf, conf), il)
    })
}

/// The area (pixels) a candidate's mask must exceed: `min_area`, or, with `target.shrink` and the
/// object's area `before` on the frame before, that fraction of it when larger.
fn area_floor(job: &JobSpec, before: Option<u64>) -> u64 {
    let shrunk = before.map_or(0, |a| (job.target.shrink as f64 * a as f64).floor() as u64);
    job.min_area.max(shrunk)
}

/// One id per pixel of an `n`-pixel frame: the object with the highest positive logit (0 where none is
/// positive; the first listed on a tie).
fn owners(found: &[Found], n: usize) -> Vec<u8> {
    let mut labels = vec![0u8; n];
    let mut best = vec![0.0f32; n];
    for (id, logits, _, _) in found {
        if let Some(l) = logits {
            for i in 0..n {
                if l[i] > best[i] {
                    best[i] = l[i];
                    labels[i] = *id;
                }
            }
        }
    }
    labels
}

/// The frame's labels with each object's outline refined along the frame's colour edges
/// (`post/guided.rs`, window radius `r` pixels): every object of `ids` is filtered from its pixels in
/// `labels`, and a pixel goes to the object whose filtered mask is highest there, above
/// `refine.threshold`. The objects of `keep` (reference masks) keep their pixels exactly, and win them.
fn refined_labels(
    frame: &RgbImage,
    labels: &[u8],
    ids: &[u8],
    keep: &[u8],
    refine: &RefineSpec,
    r: usize,
) -> Vec<u8> {
    let (w, h) = frame.dimensions();
    let n = labels.len();
    let mut out = vec![0u8; n];
    let mut best = vec![refine.threshold; n];
    for &id in keep.iter().filter(|id| ids.contains(id)) {
        for i in (0..n).filter(|&i| labels[i] == id) {
            out[i] = id;
            best[i] = f32::INFINITY;
        }
    }
    for &id in ids.iter().filter(|id| !keep.contains(id)) {
        let mask = BinaryMask {
            width: w,
            height: h,
            data: labels.iter().map(|&l| (l == id) as u8).collect(),
        };
        let Some(soft) = guided_filter(frame, &mask, r, refine.eps, block_for(r)) else {
            continue;
        };
        for y in 0..soft.height {
            let row = (soft.y0 + y) as usize * w as usize + soft.x0 as usize;
            let q = &soft.q[(y * soft.width) as usize..((y + 1) * soft.width) as usize];
            for (x, &v) in q.iter().enumerate() {
                if v > best[row + x] {
                    best[row + x] = v;
                    out[row + x] = id;
                }
            }
        }
    }
    out
}

/// Whether an object anchored on frame `start` learns from frame `index` (every `every` frames after
/// its anchor; never with `every` 0).
fn update_due(every: u64, start: u64, index: u64) -> bool {
    every > 0 && index > start && (index - start) % every == 0
}

/// A readout probability plane fused with a mask's logits: `weight x p + (1 - weight) x (logit > 0)`,
/// minus 0.5 (positive = object).
fn fuse_readout(plane: &[f32], logits: &[f32], weight: f32) -> Vec<f32> {
    plane
        .iter()
        .zip(logits)
        .map(|(&p, &l)| weight * p + (1.0 - weight) * (l > 0.0) as u8 as f32 - 0.5)
        .collect()
}

/// Model-input logits read at the centre of every cell of a `gw x gh` feature grid: the mask on the grid.
fn grid_cells(logits: &[f32], lb: &Letterbox, gw: usize, gh: usize) -> Vec<bool> {
    let s = lb.size as usize;
    let stride = (s / gw.max(1)).max(1);
    let mut out = vec![false; gw * gh];
    for y in 0..gh {
        for x in 0..gw {
            let (px, py) = (
                (x * stride + stride / 2).min(s - 1),
                (y * stride + stride / 2).min(s - 1),
            );
            out[y * gw + x] = logits[py * s + px] > 0.0;
        }
    }
    out
}

/// IoU of two masks on a `gw`-wide feature grid, over the cells inside the letterboxed frame.
fn grid_iou(a: &[bool], b: &[bool], lb: &Letterbox, gw: usize) -> f64 {
    let stride = (lb.size as usize / gw.max(1)).max(1);
    let (mut inter, mut union) = (0u32, 0u32);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if (i % gw) * stride < lb.scaled_w as usize && (i / gw) * stride < lb.scaled_h as usize {
            inter += (x && y) as u32;
            union += (x || y) as u32;
        }
    }
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// A prediction as a prompt mask on its own frame: model-input pixels with a positive logit, inside the
/// letterboxed frame (the padding is never part of a prompt, as for the first prompt).
fn input_mask(logits: &[f32], lb: &Letterbox) -> Vec<f32> {
    let s = lb.size as usize;
    let mut out = vec![0.0f32; s * s];
    for y in 0..lb.scaled_h as usize {
        for x in 0..lb.scaled_w as usize {
            if logits[y * s + x] > 0.0 {
                out[y * s + x] = 1.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16 x 16 frame and input over a 4 x 4 `mask_feat` grid with two channels: channel 0 is 1
    /// everywhere, channel 1 only on cell (0, 0).
    fn grid() -> (Tensor, Letterbox) {
        let mut data = vec![1.0f32; 16];
        data.extend((0..16).map(|i| (i == 0) as u8 as f32));
        (
            Tensor::new(vec![1, 2, 4, 4], data),
            Letterbox::new(16, 16, 16),
        )
    }

    /// Queries with 2-d embeddings and 2-d mask embeddings, each (embedding, mask embedding, IoU).
    fn queries(rows: &[([f32; 2], [f32; 2], f32)]) -> Queries {
        Queries {
            count: rows.len(),
            iou: rows.iter().map(|r| r.2).collect(),
            boxes_cxcywh: vec![[0.5; 4]; rows.len()],
            embed: rows.iter().flat_map(|r| r.0).collect(),
            embed_dim: 2,
            mask_embed: rows.iter().flat_map(|r| r.1).collect(),
            mask_dim: 2,
        }
    }

    fn job(min_score: f32, min_area: u64) -> JobSpec {
        JobSpec {
            min_score,
            min_area,
            ..JobSpec::default()
        }
    }

    #[test]
    fn a_low_score_is_passed_over_and_a_small_mask_gives_way_to_the_next() {
        let (mf, lb) = grid();
        let q = queries(&[
            ([0.0, 1.0], [1.0, 0.0], 0.9),  // the whole frame, but a score of 0
            ([1.0, 0.0], [-1.0, 2.0], 0.8), // matches; only around cell (0, 0)
            ([1.0, 0.0], [1.0, 0.0], 0.7),  // matches; the whole frame
        ]);
        let prompt = [1.0, 0.0];
        let (fl, scores, _) =
            first_fit((&job(0.5, 50), 50), &[0, 1, 2], &prompt, &q, &mf, &lb, None).unwrap();
        assert_eq!(scores, (1.0, 0.7));
        assert_eq!(fl.iter().filter(|&&v| v > 0.0).count(), 256);
        // With no area floor the small mask is taken.
        let (fl, scores, _) =
            first_fit((&job(0.5, 0), 0), &[0, 1, 2], &prompt, &q, &mf, &lb, None).unwrap();
        assert_eq!(scores, (1.0, 0.8));
        let area = fl.iter().filter(|&&v| v > 0.0).count();
        assert!(area > 0 && area < 50, "{area}");
        // Nothing above the score floor: not found.
        assert!(first_fit((&job(0.5, 0), 0), &[0], &prompt, &q, &mf, &lb, None).is_none());
    }

    #[test]
    fn a_mask_much_smaller_than_the_object_before_is_not_enough() {
        let mut j = job(0.0, 50);
        assert_eq!(j.target.shrink, 0.1, "the default");
        assert_eq!(area_floor(&j, Some(10_000)), 1_000);
        j.target.shrink = 0.0;
        assert_eq!(area_floor(&j, Some(10_000)), 50, "off");
        j.target.shrink = 0.1;
        assert_eq!(area_floor(&j, Some(300)), 50, "never below min_area");
        assert_eq!(
            area_floor(&j, None),
            50,
            "no floor for an object not seen on the frame before"
        );
    }

    #[test]
    fn the_target_models_mask_stands_in_when_large_enough() {
        let lb = Letterbox::new(16, 16, 16);
        // A 4x4 score map: the left half is the object (logit 2), the right half not (-2).
        let cells: Vec<f32> = (0..16)
            .map(|i| if i % 4 < 2 { 2.0 } else { -2.0 })
            .collect();
        let (fl, (conf, same), il) = target_pick((&cells, 4, 4), 16, &lb, 50).unwrap();
        let area = fl.iter().filter(|&&v| v > 0.0).count();
        assert!(
            (100..=156).contains(&area),
            "about half of 256 pixels: {area}"
        );
        assert_eq!(il.len(), 256);
        assert!(conf > 0.5 && conf < 1.0 && conf == same, "{conf}");
        assert!(
            target_pick((&cells, 4, 4), 16, &lb, 200).is_none(),
            "too small"
        );
    }

    #[test]
    fn only_the_first_tries_are_tried_and_fused_logits_count() {
        let (mf, lb) = grid();
        let mut rows = vec![([1.0, 0.0], [-1.0, 0.0], 0.5); TRIES];
        rows.push(([1.0, 0.0], [1.0, 0.0], 0.9));
        let q = queries(&rows);
        let order: Vec<usize> = (0..rows.len()).collect();
        let prompt = [1.0, 0.0];
        assert!(first_fit((&job(0.0, 10), 10), &order, &prompt, &q, &mf, &lb, None).is_none());
        // The target model's logits added to an empty mask make it the object.
        let lift = vec![2.0f32; 256];
        let (fl, scores, _) = first_fit(
            (&job(0.0, 10), 10),
            &order,
            &prompt,
            &q,
            &mf,
            &lb,
            Some(&lift),
        )
        .unwrap();
        assert_eq!(scores, (1.0, 0.5));
        assert!(fl.iter().all(|&v| v > 0.0));
    }

    #[test]
    fn each_pixel_goes_to_the_highest_positive_logit() {
        let found: Vec<Found> = vec![
            (1, Some(vec![2.0, 1.0, -1.0, 0.0]), (1.0, 1.0), None),
            (2, Some(vec![1.0, 3.0, -0.5, 0.0]), (1.0, 1.0), None),
            (3, None, (0.0, 0.0), None),
            (4, Some(vec![2.0, 0.5, -0.1, 0.0]), (1.0, 1.0), None),
        ];
        // Pixel 0: a tie between 1 and 4 goes to the first; 1: object 2; 2 and 3: no positive logit.
        assert_eq!(owners(&found, 4), vec![1, 2, 0, 0]);
    }

    #[test]
    fn the_target_model_learns_every_n_frames_after_its_anchor() {
        assert!(!update_due(0, 0, 10));
        assert!(!update_due(5, 3, 3));
        assert!(update_due(5, 3, 8));
        assert!(!update_due(5, 3, 9));
        assert!(update_due(1, 3, 4));
        assert!(!update_due(5, 8, 3));
    }

    #[test]
    fn the_readout_outvotes_the_mask_only_when_confident() {
        // weight 0.7: on the mask the readout keeps a pixel above 0.2857; off it, adds one above 0.7143.
        let fused = fuse_readout(&[0.3, 0.25, 0.75, 0.7], &[1.0, 1.0, -1.0, -1.0], 0.7);
        let object: Vec<bool> = fused.iter().map(|&v| v > 0.0).collect();
        assert_eq!(object, vec![true, false, true, false]);
        // weight 1: the readout alone.
        let alone = fuse_readout(&[0.6, 0.4], &[-1.0, 1.0], 1.0);
        assert!(alone[0] > 0.0 && alone[1] < 0.0);
    }

    #[test]
    fn grid_iou_and_prompts_leave_the_padding_out() {
        // A 16 x 8 frame: the bottom half of the input is padding.
        let lb = Letterbox::new(16, 8, 16);
        let logits = vec![1.0f32; 256];
        let m = input_mask(&logits, &lb);
        assert_eq!(m.iter().filter(|&&v| v == 1.0).count(), 128);
        assert!(m[128..].iter().all(|&v| v == 0.0));
        let cells = grid_cells(&logits, &lb, 4, 4);
        assert!(cells.iter().all(|&c| c));
        // Two masks that differ only in the padding rows overlap fully.
        let mut other = cells.clone();
        other[8..].iter_mut().for_each(|c| *c = false);
        assert_eq!(grid_iou(&cells, &other, &lb, 4), 1.0);
        assert_eq!(grid_iou(&[false; 16], &[false; 16], &lb, 4), 0.0);
    }

    #[test]
    fn refined_outlines_follow_the_colours_and_given_masks_stay() {
        // A 32 x 16 frame: dark left of column 12, light from 12 to 24, dark again from 24 on. Object 1's
        // pixels stop at column 14 (two past its edge), object 2 owns 14..24; object 3, a given mask,
        // holds a square across the colour edge at column 24.
        let frame = RgbImage::from_fn(32, 16, |x, _| {
            if (12..24).contains(&x) {
                image::Rgb([220, 210, 200])
            } else {
                image::Rgb([20, 30, 40])
            }
        });
        let mut labels = vec![0u8; 32 * 16];
        for y in 0..16 {
            for x in 0..32 {
                labels[y * 32 + x] = match x {
                    0..14 => 1,
                    14..24 => 2,
                    _ => 0,
                };
            }
        }
        for y in 2..6 {
            for x in 22..28 {
                labels[y * 32 + x] = 3;
            }
        }
        let given = labels.clone();
        let spec = RefineSpec::default();
        let out = refined_labels(&frame, &labels, &[1, 2, 3], &[3], &spec, 8);
        for y in 0..16 {
            let row = &out[y * 32..(y + 1) * 32];
            assert!(row[..12].iter().all(|&l| l == 1), "row {y}: {row:?}");
            let light = if (2..6).contains(&y) { 12..22 } else { 12..24 };
            assert!(row[light].iter().all(|&l| l == 2), "row {y}: {row:?}");
        }
        for i in 0..32 * 16 {
            assert_eq!(out[i] == 3, given[i] == 3, "pixel {i}");
        }
        // Unrefined ids are dropped: only the listed objects are output.
        let none = refined_labels(&frame, &labels, &[], &[], &spec, 4);
        assert!(none.iter().all(|&l| l == 0));
    }
}
