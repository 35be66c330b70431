//! A contact sheet: one PNG grid of a sample of labeled images with their overlays, for a quick look at a
//! large run. The sample is the images whose file names hash lowest (among those with at least one
//! instance), so it is the same for a run and its resumption, and spread over the whole set. Every
//! instance is labeled with its class name and score.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{imageops, Rgb, RgbImage};

use super::record::ImageRecord;
use super::{create_parent, overlay, text, write_atomic, FrameRecord, Sink, SinkContext};
use crate::error::Error;
use crate::palette;

const CELL_W: u32 = 256;
const CELL_H: u32 = 192;
const GAP: u32 = 4;

/// The `contact_sheet` sink: one PNG grid of a sample of the labeled images with their overlays.
pub struct ContactSheetSink {
    path: PathBuf,
    count: usize,
    /// Best `count` so far by hash: thumbnail, or `None` for an image of an earlier run (read again).
    chosen: BTreeMap<(u64, u64), Option<RgbImage>>,
    previous: BTreeMap<u64, ImageRecord>,
    source_root: Option<PathBuf>,
    names: std::sync::Arc<BTreeMap<u32, String>>,
}

impl ContactSheetSink {
    /// A sink that draws up to `count` images on the sheet at `path`, labeled with `ctx`'s category
    /// names; creates the parent folder.
    pub fn new(path: &Path, count: usize, ctx: &SinkContext) -> Result<Self, Error> {
        create_parent(path)?;
        let mut sink = ContactSheetSink {
            path: path.to_path_buf(),
            count: count.clamp(1, 256),
            chosen: BTreeMap::new(),
            previous: BTreeMap::new(),
            source_root: ctx.source_root.clone(),
            names: std::sync::Arc::new(ctx.categories.iter().cloned().collect()),
        };
        for r in ctx.previous.iter().filter(|r| !r.annotations.is_empty()) {
            sink.previous.insert(r.index, r.clone());
            sink.offer(hash(&r.file), r.index, || None);
        }
        Ok(sink)
    }

    fn offer(&mut self, h: u64, index: u64, thumb: impl FnOnce() -> Option<RgbImage>) {
        let key = (h, index);
        if self.chosen.len() >= self.count {
            match self.chosen.keys().next_back() {
                Some(&worst) if key < worst => {
                    self.chosen.remove(&worst);
                }
                _ => return,
            }
        }
        self.chosen.insert(key, thumb());
    }
}

fn hash(name: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(name.as_bytes());
    u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]))
}

/// One instance's label: its palette id, category, score and box (`xyxy`, frame pixels).
struct Tag {
    id: u8,
    category: u32,
    score: f64,
    box_xyxy: [f64; 4],
}

/// The thumbnail of an overlay, with each instance's class name and score at its box's top-left corner
/// (drawn best score last, so that it stays readable where labels overlap).
fn labeled_thumbnail(
    overlay: &RgbImage,
    mut tags: Vec<Tag>,
    names: &BTreeMap<u32, String>,
) -> RgbImage {
    let mut t = thumbnail(overlay);
    let s = t.width() as f64 / overlay.width().max(1) as f64;
    tags.sort_by(|a, b| a.score.total_cmp(&b.score));
    for g in tags {
        let name = names
            .get(&g.category)
            .cloned()
            .unwrap_or_else(|| g.category.to_string());
        let [x0, y0, ..] = g.box_xyxy;
        let c = palette::color(g.id);
        text::label(
            &mut t,
            (x0 * s) as i64,
            (y0 * s) as i64,
            &format!("{name} {:.2}", g.score),
            Rgb(c),
        );
    }
    t
}

fn thumbnail(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let s = (CELL_W as f64 / w.max(1) as f64).min(CELL_H as f64 / h.max(1) as f64);
    let (tw, th) = (
        ((w as f64 * s).round() as u32).max(1),
        ((h as f64 * s).round() as u32).max(1),
    );
    imageops::resize(img, tw, th, imageops::FilterType::Triangle)
}

impl Sink for ContactSheetSink {
    fn write(&mut self, f: &FrameRecord<'_>) -> Result<(), Error> {
        if f.result.objects.iter().all(|o| o.area == 0) {
            return Ok(());
        }
        let file = f.file.unwrap_or(f.name);
        self.previous.remove(&f.index);
        let tags = f
            .result
            .objects
            .iter()
            .filter(|o| o.area > 0)
            .filter_map(|o| {
                Some(Tag {
                    id: o.id,
                    category: o.category,
                    score: o.score as f64,
                    box_xyxy: o.box_xyxy?.map(|v| v as f64),
                })
            })
            .collect();
        let names = self.names.clone();
        self.offer(hash(file), f.index, || {
            Some(labeled_thumbnail(
                &overlay::draw(f.image, &f.result.labels),
                tags,
                &names,
            ))
        });
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        if self.chosen.is_empty() {
            return Ok(vec![]);
        }
        let mut cells: Vec<(u64, RgbImage)> = Vec::new();
        for (&(_, index), thumb) in &self.chosen {
            let img = match thumb {
                Some(t) => t.clone(),
                None => match self.previous.get(&index).and_then(|r| self.redraw(r)) {
                    Some(t) => t,
                    None => continue,
                },
            };
            cells.push((index, img));
        }
        cells.sort_by_key(|c| c.0);
        let cols = (cells.len() as f64).sqrt().ceil().max(1.0) as u32;
        let rows = (cells.len() as u32).div_ceil(cols);
        let mut sheet = RgbImage::from_pixel(
            cols * (CELL_W + GAP) + GAP,
            rows * (CELL_H + GAP) + GAP,
            Rgb([24, 24, 24]),
        );
        for (k, (_, t)) in cells.iter().enumerate() {
            let (c, r) = (k as u32 % cols, k as u32 / cols);
            let x = GAP + c * (CELL_W + GAP) + (CELL_W - t.width()) / 2;
            let y = GAP + r * (CELL_H + GAP) + (CELL_H - t.height()) / 2;
            imageops::replace(&mut sheet, t, x as i64, y as i64);
        }
        write_atomic(&self.path, |tmp| {
            sheet
                .save_with_format(tmp, image::ImageFormat::Png)
                .map_err(|e| Error::Sink {
                    path: self.path.clone(),
                    msg: format!("cannot write: {e}"),
                })
        })?;
        Ok(vec![self.path.clone()])
    }
}

impl ContactSheetSink {
    /// An image labeled by an earlier run: read it again and draw its annotations from the record.
    fn redraw(&self, r: &ImageRecord) -> Option<RgbImage> {
        let root = self.source_root.as_ref()?;
        let img = crate::source::read_rgb(
            &root.join(&r.file),
            crate::spec::RuntimeSpec::default().max_frame_pixels,
        )
        .ok()?;
        if img.dimensions() != (r.width, r.height) {
            return None;
        }
        let mut labels = vec![0u8; (r.width * r.height) as usize];
        let mut tags = Vec::new();
        for (k, a) in r.annotations.iter().enumerate().take(255) {
            let m = a.segmentation.decode()?;
            for (l, &v) in labels.iter_mut().zip(&m.data) {
                if v != 0 && *l == 0 {
                    *l = k as u8 + 1;
                }
            }
            let [x, y, w, h] = a.bbox.map(|v| v as f64);
            tags.push(Tag {
                id: k as u8 + 1,
                category: a.category_id,
                score: a.score,
                box_xyxy: [x, y, x + w, y + h],
            });
        }
        Some(labeled_thumbnail(
            &overlay::draw(&img, &labels),
            tags,
            &self.names,
        ))
    }
}
