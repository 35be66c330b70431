//! Prompts decoded where they are: a box, points or scribbles on the reference frame become interactive
//! query rows on that frame, and the best of their candidate masks is the object's reference mask.
//! Feeding that mask to the prompt encoder and the memory is `track.rs`; a mask prompt needs none of this.

use image::RgbImage;

use super::focus::{best_scored, refine, Candidate};
use crate::error::{Error, Result};
use crate::model::contract::names;
use crate::model::{Features, Letterbox, Model, Preprocessor, Queries, QueryAnchor};
use crate::post::distance::most_interior_pixel;
use crate::post::guided::{block_for, guided_filter};
use crate::post::mask::{frame_mask, stability};
use crate::post::BinaryMask;
use crate::prompt::raster::rasterize;
use crate::prompt::ObjectPrompt;
use crate::spec::{FocusSpec, RefineSpec};

/// Most query rows one object's prompt is decoded with; a prompt with more (many points or scribbles)
/// is decoded with an evenly spaced subset of its rows, while the choice still checks every point.
pub const MAX_ROWS: usize = 32;

/// A candidate fits the scribbles when at least this share of their pixels is inside its mask.
pub const SCRIBBLE_SHARE: f64 = 0.5;

/// What an object's prompt asks of its reference mask, and the query rows it is decoded with.
#[derive(Debug, Clone)]
pub struct PromptCues {
    /// Query rows, normalised to the model input.
    pub rows: Vec<QueryAnchor>,
    /// Pixels `(x, y)` of the frame the mask should contain.
    pub positive: Vec<[u32; 2]>,
    /// Pixels `(x, y)` of the frame the mask should leave out.
    pub negative: Vec<[u32; 2]>,
    /// The scribbles' pixels, which the mask should mostly contain.
    pub scribbles: Option<BinaryMask>,
}

/// The chosen candidate.
#[derive(Debug, Clone)]
pub struct Choice {
    /// Index of its query in the decoder output (the generic queries first).
    pub query: usize,
    /// The decoder's predicted IoU of the mask, a probability in `[0,1]`.
    pub pred_iou: f32,
    /// At frame resolution, logits > 0.
    pub mask: BinaryMask,
    /// Whether it met every cue (or only was the best of those that did not).
    pub fits: bool,
}

impl PromptCues {
    /// The cues of a box / points / scribbles prompt on a frame letterboxed by `lb`: a box is a box row,
    /// each positive point a point row, each scribble the box of its pixels plus a point row at its most
    /// interior pixel. Negative points only take part in the choice. A mask in the prompt is ignored.
    pub fn of_prompt(o: &ObjectPrompt, lb: &Letterbox) -> Result<PromptCues> {
        let (w, h) = (lb.frame_w, lb.frame_h);
        let mut rows = Vec::new();
        if let Some(b) = o.box_xyxy {
            rows.push(box_row(lb, b));
        }
        for &p in &o.points {
            rows.push(point_row(lb, p));
        }
        let mut all_scribbles: Option<BinaryMask> = None;
        for s in &o.scribbles {
            let only = ObjectPrompt {
                mask: None,
                mask_value: None,
                box_xyxy: None,
                points: vec![],
                negative_points: vec![],
                scribbles: vec![s.clone()],
                ..o.clone()
            };
            let m = rasterize(&only, w, h)?;
            if let (Some(b), Some(c)) = (m.bbox_xyxy(), most_interior_pixel(&m)) {
                rows.push(box_row(lb, b.map(|v| v as f32)));
                rows.push(point_row(lb, [c[0] as f32 + 0.5, c[1] as f32 + 0.5]));
            }
            match &mut all_scribbles {
                Some(a) => a.data.iter_mut().zip(&m.data).for_each(|(a, &v)| *a |= v),
                None => all_scribbles = Some(m),
            }
        }
        if rows.is_empty() {
            return Err(Error::Object {
                id: o.id,
                frame: o.frame,
                msg: "the prompt has no box, point or scribble to decode".into(),
            });
        }
        let pixel = |p: [f32; 2]| {
            [
                (p[0].max(0.0) as u32).min(w - 1),
                (p[1].max(0.0) as u32).min(h - 1),
            ]
        };
        Ok(PromptCues {
            rows: thin(rows, MAX_ROWS),
            positive: o.points.iter().map(|&p| pixel(p)).collect(),
            negative: o.negative_points.iter().map(|&p| pixel(p)).collect(),
            scribbles: all_scribbles,
        })
    }

    /// Whether `mask` contains every positive point, most scribble pixels and no negative point.
    pub fn fit(&self, mask: &BinaryMask) -> bool {
        let at = |p: &[u32; 2]| mask.data[(p[1] * mask.width + p[0]) as usize] != 0;
        if !self.positive.iter().all(at) || self.negative.iter().any(at) {
            return false;
        }
        match &self.scribbles {
            Some(s) => {
                let (mut total, mut inside) = (0u64, 0u64);
                for (&a, &b) in s.data.iter().zip(&mask.data) {
                    total += (a != 0) as u64;
                    inside += (a != 0 && b != 0) as u64;
                }
                total == 0 || inside as f64 >= SCRIBBLE_SHARE * total as f64
            }
            None => true,
        }
    }
}

/// A point `(x, y)` in frame pixels (continuous) as a query row.
pub fn point_row(lb: &Letterbox, p: [f32; 2]) -> QueryAnchor {
    let s = lb.size as f32;
    let (x, y) = lb.frame_to_input(p[0], p[1]);
    QueryAnchor::point(x / s, y / s)
}

/// A box `xyxy` in frame pixels as a query row.
pub fn box_row(lb: &Letterbox, b: [f32; 4]) -> QueryAnchor {
    let s = lb.size as f32;
    let (x0, y0) = lb.frame_to_input(b[0], b[1]);
    let (x1, y1) = lb.frame_to_input(b[2], b[3]);
    QueryAnchor::from_xyxy([x0 / s, y0 / s, x1 / s, y1 / s])
}

/// At most `n` of `rows`, evenly spaced, first and order kept.
fn thin(rows: Vec<QueryAnchor>, n: usize) -> Vec<QueryAnchor> {
    if rows.len() <= n {
        return rows;
    }
    (0..n).map(|i| rows[i * rows.len() / n]).collect()
}

/// Every interactive query of `q` (those after the `generic` ones) with a non-empty mask, as a
/// candidate of the whole image, with whether it fits `cues`. Masks are made as everywhere else
/// (`frame_mask`).
pub fn candidates(
    q: &Queries,
    generic: usize,
    mask_feat: &crate::model::Tensor,
    lb: &Letterbox,
    cues: &PromptCues,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for i in generic.min(q.count)..q.count {
        let (mask, _, area) = frame_mask(mask_feat, q.mask_row(i), lb);
        if area == 0 {
            continue;
        }
        out.push(Candidate {
            query: i,
            pred_iou: q.iou[i],
            fits: cues.fit(&mask),
            mask,
            cut: false,
            stability: stability(mask_feat, q.mask_row(i)),
        });
    }
    out
}

/// The choice rule on the whole image alone: candidates with an empty mask are out; of the rest, those
/// that fit the cues come first, then the highest predicted IoU, then the lowest query index.
pub fn choose(
    q: &Queries,
    generic: usize,
    mask_feat: &crate::model::Tensor,
    lb: &Letterbox,
    cues: &PromptCues,
) -> Option<Choice> {
    best_scored(candidates(q, generic, mask_feat, lb, cues)).map(Choice::from)
}

/// Decodes `o`'s prompt on its reference image (`image`, encoded as `feats` through letterbox `lb`)
/// and chooses its reference mask, looking closer on crops of the image as `focus` says
/// (`decode/focus.rs`; `pre` encodes the crops); `None` when every candidate mask is empty.
pub fn reference_mask(
    model: &Model,
    pre: &mut Preprocessor,
    image: &RgbImage,
    feats: &Features,
    lb: &Letterbox,
    o: &ObjectPrompt,
    focus: &FocusSpec,
) -> Result<Option<Choice>> {
    let cues = PromptCues::of_prompt(o, lb)?;
    let q = model
        .decode(&[feats], &cues.rows)?
        .pop()
        .ok_or_else(|| Error::Runtime("the decoder returned no item".into()))?;
    let mask_feat = feats
        .get(names::MASK_FEAT)
        .ok_or_else(|| Error::Runtime("the encoder gave no `mask_feat`".into()))?;
    let whole = candidates(&q, model.spec.queries.generic, mask_feat, lb, &cues);
    let choice = refine(model, pre, image, o, &cues, whole, focus)?;
    let clicked = o.mask.is_none() && o.scribbles.is_empty();
    Ok(match choice {
        Some(c) if clicked && focus.edges > 0.0 => Some(to_edges(c, image, model, focus.edges)),
        c => c,
    })
}

/// A decoded box or click mask with its outline moved onto the image's colour edges: the guided filter
/// of `post/guided.rs` with a radius of `cells` mask-grid cells of the whole image (kept as it is when
/// the filter leaves nothing).
fn to_edges(mut c: Choice, image: &RgbImage, model: &Model, cells: f32) -> Choice {
    let (w, h) = image.dimensions();
    // The filter of `job.refine` at its defaults, with this radius.
    let filter = RefineSpec {
        radius: cells,
        ..RefineSpec::default()
    };
    let r = filter.radius_px(w.max(h), model.input_size());
    let snapped = guided_filter(image, &c.mask, r, filter.eps, block_for(r))
        .map(|soft| soft.above(filter.threshold, w, h))
        .filter(|m| m.area() > 0);
    if let Some(m) = snapped {
        c.mask = m;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tensor;

    /// An 80x80 frame on an 80x80 model input, mask features on a 20x20 grid (4 px per cell) with one
    /// channel per region plus a constant: region 0 = left half, 1 = top-left quarter, 2 = right half.
    fn setup() -> (Tensor, Letterbox) {
        let g = 20usize;
        let mut data = vec![0.0f32; 4 * g * g];
        for y in 0..g {
            for x in 0..g {
                data[y * g + x] = 1.0;
                data[g * g + y * g + x] = (x < 10) as u8 as f32;
                data[2 * g * g + y * g + x] = (x < 10 && y < 10) as u8 as f32;
                data[3 * g * g + y * g + x] = (x >= 10) as u8 as f32;
            }
        }
        (
            Tensor::new(vec![1, 4, g, g], data),
            Letterbox::new(80, 80, 80),
        )
    }

    /// Mask embedding of region `r` (`None`: empty mask): `-0.5 + 1 * channel`.
    fn embed(r: Option<usize>) -> [f32; 4] {
        let mut e = [-0.5, 0.0, 0.0, 0.0];
        if let Some(r) = r {
            e[1 + r] = 1.0;
        }
        e
    }

    /// One generic query (region 2, IoU 0.99) then interactive queries with these regions and IoUs.
    fn queries(cands: &[(Option<usize>, f32)]) -> Queries {
        let mut regions = vec![(Some(2), 0.99f32)];
        regions.extend_from_slice(cands);
        Queries {
            count: regions.len(),
            iou: regions.iter().map(|r| r.1).collect(),
            boxes_cxcywh: vec![[0.5, 0.5, 1.0, 1.0]; regions.len()],
            embed: vec![0.0; regions.len()],
            embed_dim: 1,
            mask_embed: regions.iter().flat_map(|r| embed(r.0)).collect(),
            mask_dim: 4,
        }
    }

    fn cues(positive: &[[u32; 2]], negative: &[[u32; 2]]) -> PromptCues {
        PromptCues {
            rows: vec![QueryAnchor::point(0.5, 0.5)],
            positive: positive.to_vec(),
            negative: negative.to_vec(),
            scribbles: None,
        }
    }

    #[test]
    fn without_cues_the_highest_predicted_iou_wins_and_generic_queries_never() {
        let (feat, lb) = setup();
        let q = queries(&[(Some(0), 0.6), (Some(1), 0.8), (None, 0.95)]);
        let c = choose(&q, 1, &feat, &lb, &cues(&[], &[])).unwrap();
        // The empty mask (IoU 0.95) and the generic query (0.99) are out.
        assert_eq!((c.query, c.pred_iou, c.fits), (2, 0.8, true));
        assert_eq!(c.mask.bbox_xyxy(), Some([0, 0, 40, 40]));
    }

    #[test]
    fn a_fitting_candidate_beats_a_better_scored_one() {
        let (feat, lb) = setup();
        let q = queries(&[(Some(1), 0.9), (Some(0), 0.5), (Some(2), 0.7)]);
        // A positive point in the bottom-left: only the left half contains it.
        let c = choose(&q, 1, &feat, &lb, &cues(&[[10, 60]], &[])).unwrap();
        assert_eq!((c.query, c.fits), (2, true));
        // A negative point in the bottom-left as well: the top-left quarter fits.
        let c = choose(&q, 1, &feat, &lb, &cues(&[[10, 10]], &[[10, 60]])).unwrap();
        assert_eq!((c.query, c.fits), (1, true));
        // Nothing fits (positive points left and right): the highest predicted IoU.
        let c = choose(&q, 1, &feat, &lb, &cues(&[[10, 10], [70, 10]], &[])).unwrap();
        assert_eq!((c.query, c.fits), (1, false));
        // Equal IoUs: the first query.
        let q = queries(&[(Some(0), 0.7), (Some(2), 0.7)]);
        assert_eq!(choose(&q, 1, &feat, &lb, &cues(&[], &[])).unwrap().query, 1);
        assert!(choose(&queries(&[(None, 0.9)]), 1, &feat, &lb, &cues(&[], &[])).is_none());
    }

    #[test]
    fn scribble_pixels_must_be_mostly_inside() {
        let (feat, lb) = setup();
        let q = queries(&[(Some(1), 0.9), (Some(0), 0.5)]);
        // A horizontal scribble along y = 20 from x = 0 to 59: 40 of its 60 pixels lie in the left
        // half but only those with y < 40 in the top-left quarter, which is also 40 of them.
        let mut s = BinaryMask::empty(80, 80);
        for x in 0..60 {
            s.data[20 * 80 + x] = 1;
        }
        let mut c = cues(&[], &[]);
        c.scribbles = Some(s.clone());
        assert_eq!(choose(&q, 1, &feat, &lb, &c).unwrap().query, 1);
        // A vertical scribble at x = 5 over the whole height: half in the quarter, all in the half.
        let mut s = BinaryMask::empty(80, 80);
        for y in 0..80 {
            s.data[y * 80 + 5] = 1;
        }
        // Exactly half is enough for the quarter, so the better-scored quarter wins...
        c.scribbles = Some(s.clone());
        assert_eq!(choose(&q, 1, &feat, &lb, &c).unwrap().query, 1);
        // ...but not once a few more pixels lie below it.
        for y in 0..10 {
            s.data[y * 80 + 5] = 0;
        }
        c.scribbles = Some(s);
        assert_eq!(choose(&q, 1, &feat, &lb, &c).unwrap().query, 2);
    }

    #[test]
    fn prompts_become_rows_in_model_input_coordinates() {
        // A 200x100 frame on a 100x100 input: half scale, the frame in the top half.
        let lb = Letterbox::new(200, 100, 100);
        let o: ObjectPrompt = serde_yaml_ng::from_str(
            "{ id: 1, box: [20, 10, 120, 90], points: [[100, 50]], negative_points: [[0, 0]],\n\
             \x20 scribbles: [{ points: [[40, 20], [40, 60]], width: 4 }] }",
        )
        .unwrap();
        let c = PromptCues::of_prompt(&o, &lb).unwrap();
        assert_eq!(c.rows.len(), 4);
        let close = |a: [f32; 4], b: [f32; 4]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(
            close(c.rows[0].cxcywh, [0.35, 0.25, 0.5, 0.4]),
            "{:?}",
            c.rows[0]
        );
        assert!(
            close(c.rows[1].cxcywh, [0.5, 0.25, 0.0, 0.0]),
            "{:?}",
            c.rows[1]
        );
        // The scribble: a box around x = 38..42, y = 18..62, and a point on its centre line (the first
        // of the pixels farthest from the outside, near its top end).
        let b = c.rows[2].cxcywh;
        assert!(!c.rows[2].is_point());
        assert!(
            (b[0] - 0.2).abs() < 0.01 && (b[1] - 0.2).abs() < 0.01,
            "{b:?}"
        );
        let p = c.rows[3].cxcywh;
        assert!(c.rows[3].is_point());
        assert!(
            (p[0] - 0.2).abs() < 0.01 && p[1] > 0.09 && p[1] < 0.31,
            "{p:?}"
        );
        assert_eq!(c.positive, vec![[100, 50]]);
        assert_eq!(c.negative, vec![[0, 0]]);
        assert!(c.scribbles.as_ref().unwrap().area() > 100);
    }

    #[test]
    fn many_rows_are_thinned_evenly() {
        let rows: Vec<QueryAnchor> = (0..100)
            .map(|i| QueryAnchor::point(i as f32, 0.0))
            .collect();
        let t = thin(rows, 32);
        assert_eq!(t.len(), 32);
        assert_eq!(t[0].cxcywh[0], 0.0);
        assert_eq!(t[1].cxcywh[0], 3.0);
    }
}
