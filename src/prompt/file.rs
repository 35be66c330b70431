//! The prompt file (YAML or JSON): objects by id, each with a reference frame and one or more of a mask
//! PNG, a box, positive/negative points and scribbles. Checked when read; coordinates when rasterised.
//! An id may be prompted again on later frames: a correction that re-anchors the object there, or
//! `absent: true`, which ends its output until its next prompt.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::palette;

/// Most objects one run follows.
pub const MAX_OBJECTS: usize = 255;

/// Most points one object's prompt may have: positive, negative and scribble points together.
pub const MAX_POINTS_PER_OBJECT: usize = 10_000;

/// Largest prompt file read (bytes).
pub const MAX_PROMPT_FILE_BYTES: u64 = 16 << 20;

/// A prompt file: every prompt of every object (first prompts, corrections and absences).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PromptFile {
    /// The prompts, at most [`MAX_PROMPTS`]; at most [`MAX_OBJECTS`] distinct ids.
    pub objects: Vec<ObjectPrompt>,
}

/// One prompt of an object to follow, on one frame. Written back (serde) with only the fields it has.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectPrompt {
    /// Object id, 1..=255: the palette index in label PNGs.
    pub id: u8,
    /// Index of the reference frame in the source (before range and stride).
    #[serde(default)]
    pub frame: u64,
    /// A reference image outside the source, instead of `frame`: the prompt's coordinates and mask are on
    /// it, and the object is searched from the first frame read (cross-image referring). Several prompts
    /// of one id with images are all pinned into its memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// A mask PNG: binary (any non-zero pixel), or a palette/grayscale PNG with `mask_value` picking one id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<PathBuf>,
    /// With a palette or grayscale `mask`: the pixel value that is this object (default: any non-zero
    /// pixel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_value: Option<u8>,
    /// `xyxy` in frame pixels.
    #[serde(default, rename = "box", skip_serializing_if = "Option::is_none")]
    pub box_xyxy: Option<[f32; 4]>,
    /// Positive points `(x, y)` in frame pixels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<[f32; 2]>,
    /// Negative points: carved out of the prompt region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub negative_points: Vec<[f32; 2]>,
    /// Strokes drawn on the object; the mask should hold most of their pixels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scribbles: Vec<Scribble>,
    /// The object is gone from this frame on (until its next prompt); nothing else may be given.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
}

/// Most prompts of one file (every object's first prompt, corrections and absences together).
pub const MAX_PROMPTS: usize = 10_000;

/// A polyline of at least one point, drawn `width` frame pixels wide.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scribble {
    /// The polyline's vertices `(x, y)` in frame pixels.
    pub points: Vec<[f32; 2]>,
    /// Stroke width in frame pixels (default 5; must be > 0).
    #[serde(default = "default_width")]
    pub width: f32,
}

fn default_width() -> f32 {
    5.0
}

impl PromptFile {
    /// Reads and checks a prompt file; mask paths resolve against its folder.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let err = |msg: String| Error::Prompt {
            path: path.to_path_buf(),
            msg,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| err(format!("cannot read: {e}")))?
            .len();
        if len > MAX_PROMPT_FILE_BYTES {
            return Err(err(format!(
                "the file is {len} bytes, more than the {MAX_PROMPT_FILE_BYTES} a prompt file may have; \
                 give large masks as PNG files (`mask:`) rather than as points"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&bytes, path)
    }

    /// As [`PromptFile::load`], from the file's bytes; `path` names it in errors and anchors mask paths.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, Error> {
        let err = |msg: String| Error::Prompt {
            path: path.to_path_buf(),
            msg,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| {
            err(format!(
                "not UTF-8 text ({e}); a prompt file is YAML or JSON"
            ))
        })?;
        let mut file: PromptFile = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for o in &mut file.objects {
            for p in [&mut o.mask, &mut o.image].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        file.check().map_err(err)?;
        Ok(file)
    }

    /// Objects from one mask PNG on one frame: a binary mask is object 1; a palette or grayscale PNG
    /// gives one object per non-zero value.
    pub fn from_mask(mask: &Path, frame: u64) -> Result<Self, Error> {
        let labels = palette::read(mask)?;
        let mut values: Vec<u8> = labels.data.iter().copied().filter(|&v| v != 0).collect();
        values.sort_unstable();
        values.dedup();
        let err = |msg: String| Error::Prompt {
            path: mask.to_path_buf(),
            msg,
        };
        if values.is_empty() {
            return Err(err(
                "the mask is empty (every pixel is 0); mark the object with non-zero pixels".into(),
            ));
        }
        let binary = values == [255] || values == [1];
        let objects = if binary {
            vec![ObjectPrompt::mask(1, frame, mask, None)]
        } else {
            values
                .iter()
                .map(|&v| ObjectPrompt::mask(v, frame, mask, Some(v)))
                .collect()
        };
        let file = PromptFile { objects };
        file.check().map_err(err)?;
        Ok(file)
    }

    /// The distinct object ids, in order.
    pub fn ids(&self) -> Vec<u8> {
        let mut ids: Vec<u8> = self.objects.iter().map(|o| o.id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.objects.is_empty() {
            return Err("`objects` is empty; list at least one object".into());
        }
        if self.objects.len() > MAX_PROMPTS {
            return Err(format!(
                "{} prompts; at most {MAX_PROMPTS} are supported",
                self.objects.len()
            ));
        }
        let mut seen = HashSet::new();
        for o in &self.objects {
            let at = format!("object {}", o.id);
            if o.id == 0 {
                return Err("object id 0 is the background; ids are 1..=255".into());
            }
            if let Some(img) = &o.image {
                if o.frame != 0 || o.absent {
                    return Err(format!(
                        "{at}: a prompt on a reference `image` takes no `frame` or `absent` (it holds from \
                         the first frame read)"
                    ));
                }
                if !img.is_file() {
                    return Err(format!("{at}: reference image {} not found", img.display()));
                }
            }
            if !seen.insert((o.id, o.frame, o.image.clone())) {
                return Err(format!(
                    "{at}: prompted twice on frame {}; each object needs its own id, and an object \
                     prompted again (a correction) needs a later frame",
                    o.frame
                ));
            }
            if o.absent {
                let first = self
                    .objects
                    .iter()
                    .filter(|p| p.id == o.id)
                    .map(|p| p.frame)
                    .min();
                if first == Some(o.frame) {
                    return Err(format!(
                        "{at}: `absent: true` on frame {} needs an earlier prompt of the object",
                        o.frame
                    ));
                }
                if o.mask.is_some()
                    || o.box_xyxy.is_some()
                    || !o.points.is_empty()
                    || !o.negative_points.is_empty()
                    || !o.scribbles.is_empty()
                {
                    return Err(format!(
                        "{at}: frame {} is `absent: true`; it takes no mask, box, points or scribbles",
                        o.frame
                    ));
                }
                continue;
            }
            if o.mask.is_none()
                && o.box_xyxy.is_none()
                && o.points.is_empty()
                && o.scribbles.is_empty()
            {
                return Err(format!("{at}: give a mask, a box, points or scribbles"));
            }
            if let Some(m) = &o.mask {
                if !m.is_file() {
                    return Err(format!("{at}: mask file {} not found", m.display()));
                }
            }
            if let Some(b) = o.box_xyxy {
                if !(b.iter().all(|v| v.is_finite()) && b[2] > b[0] && b[3] > b[1]) {
                    return Err(format!(
                        "{at}: box {b:?} must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0"
                    ));
                }
            }
            let points = o.points.len()
                + o.negative_points.len()
                + o.scribbles.iter().map(|s| s.points.len()).sum::<usize>();
            if points > MAX_POINTS_PER_OBJECT {
                return Err(format!(
                    "{at}: {points} points; at most {MAX_POINTS_PER_OBJECT} (points, negative points and \
                     scribble points together) are supported; give a large region as a mask PNG"
                ));
            }
            for s in &o.scribbles {
                if s.points.is_empty() || !(s.width > 0.0 && s.width.is_finite()) {
                    return Err(format!(
                        "{at}: a scribble needs at least one point and a positive width"
                    ));
                }
            }
            let all_points = o
                .points
                .iter()
                .chain(&o.negative_points)
                .chain(o.scribbles.iter().flat_map(|s| &s.points));
            for p in all_points {
                if !p.iter().all(|v| v.is_finite()) {
                    return Err(format!("{at}: point {p:?} is not a number"));
                }
            }
        }
        Ok(())
    }

    /// Checks that every reference frame exists in a source of `frames` frames.
    pub fn check_frames(&self, frames: u64, path: &Path) -> Result<(), Error> {
        for o in self.objects.iter().filter(|o| o.image.is_none()) {
            if o.frame >= frames {
                return Err(Error::Prompt {
                    path: path.to_path_buf(),
                    msg: format!(
                        "object {}: frame {} does not exist; the source has {frames} frames (0..{})",
                        o.id,
                        o.frame,
                        frames.saturating_sub(1)
                    ),
                });
            }
        }
        Ok(())
    }
}

impl ObjectPrompt {
    /// Object `id` on frame `frame` with nothing given yet (set a box, points, scribbles or a mask).
    pub fn at_frame(id: u8, frame: u64) -> Self {
        ObjectPrompt {
            id,
            frame,
            mask: None,
            mask_value: None,
            image: None,
            box_xyxy: None,
            points: vec![],
            negative_points: vec![],
            scribbles: vec![],
            absent: false,
        }
    }

    fn mask(id: u8, frame: u64, path: &Path, value: Option<u8>) -> Self {
        ObjectPrompt {
            mask: Some(path.to_path_buf()),
            mask_value: value,
            ..ObjectPrompt::at_frame(id, frame)
        }
    }

    /// Whether the prompt is a mask alone (then the reference frame's output is that mask).
    pub fn is_mask_only(&self) -> bool {
        self.mask.is_some()
            && self.box_xyxy.is_none()
            && self.points.is_empty()
            && self.scribbles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PromptFile, String> {
        let f: PromptFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        f.check()?;
        Ok(f)
    }

    #[test]
    fn reads_boxes_points_and_scribbles() {
        let f = parse(
            "objects:\n  - { id: 2, frame: 3, box: [1, 2, 30, 40] }\n  - id: 5\n    points: [[4, 5]]\n    scribbles: [{ points: [[1,1],[9,9]], width: 3 }]\n",
        )
        .unwrap();
        assert_eq!(f.objects.len(), 2);
        assert_eq!(f.objects[0].box_xyxy, Some([1.0, 2.0, 30.0, 40.0]));
        assert_eq!(f.objects[1].scribbles[0].width, 3.0);
    }

    #[test]
    fn rejects_duplicates_empty_and_bad_boxes() {
        let e = parse("objects:\n  - { id: 1, box: [0,0,5,5] }\n  - { id: 1, box: [0,0,5,5] }\n")
            .unwrap_err();
        assert!(e.contains("prompted twice on frame 0"), "{e}");
        // The same id on a later frame is a correction; `absent` needs an earlier prompt and nothing else.
        let f = parse(
            "objects:\n  - { id: 1, box: [0,0,5,5] }\n  - { id: 1, frame: 4, box: [1,1,5,5] }\n  - { id: 1, frame: 9, absent: true }\n",
        )
        .unwrap();
        assert_eq!(f.ids(), vec![1]);
        let e = parse("objects:\n  - { id: 1, frame: 2, absent: true }\n  - { id: 1, frame: 4, box: [1,1,5,5] }\n")
            .unwrap_err();
        assert!(e.contains("needs an earlier prompt"), "{e}");
        let e = parse("objects:\n  - { id: 1, box: [0,0,5,5] }\n  - { id: 1, frame: 3, absent: true, box: [0,0,5,5] }\n")
            .unwrap_err();
        assert!(e.contains("takes no mask"), "{e}");
        let e = parse("objects:\n  - { id: 1 }\n").unwrap_err();
        assert!(e.contains("give a mask"), "{e}");
        let e = parse("objects:\n  - { id: 1, box: [5,0,5,5] }\n").unwrap_err();
        assert!(e.contains("x1 > x0"), "{e}");
        let e = parse("objects:\n  - { id: 1, colour: red }\n").unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn unknown_frame_is_named() {
        let f = parse("objects:\n  - { id: 4, frame: 10, box: [0,0,5,5] }\n").unwrap();
        let e = f
            .check_frames(10, Path::new("p.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("object 4: frame 10 does not exist"), "{e}");
    }
}
