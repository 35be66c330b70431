//! MOTChallenge text (`det.txt` / tracker output): one line per object and frame,
//! `frame,id,bb_left,bb_top,bb_width,bb_height,conf,-1,-1,-1`, frames numbered from 1 (the source index
//! plus one), boxes in frame pixels around the object's mask, conf its score. Objects with an empty mask
//! on a frame have no line. Written line by line, and a line that cannot be written whole is cut off again,
//! so the file always ends with a complete line.

use std::path::{Path, PathBuf};

use super::lines::LineFile;
use super::{FrameRecord, Sink};
use crate::error::Error;

/// The `mot` sink: MOTChallenge text, one line per object and frame.
pub struct MotSink {
    out: LineFile,
}

impl MotSink {
    /// A sink that writes a new `path` (an existing file is replaced).
    pub fn new(path: &Path) -> Result<Self, Error> {
        Ok(MotSink {
            out: LineFile::create(path)?,
        })
    }
}

/// The MOTChallenge lines of one frame.
pub fn lines(f: &FrameRecord<'_>) -> String {
    let mut text = String::new();
    for o in &f.result.objects {
        let Some([x0, y0, x1, y1]) = o.box_xyxy.filter(|_| o.area > 0) else {
            continue;
        };
        text.push_str(&format!(
            "{},{},{},{},{},{},{:.4},-1,-1,-1\n",
            f.index + 1,
            o.id,
            x0,
            y0,
            x1 - x0,
            y1 - y0,
            o.score
        ));
    }
    text
}

impl Sink for MotSink {
    fn write(&mut self, f: &FrameRecord<'_>) -> Result<(), Error> {
        self.out.write(&lines(f))
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{FrameObjects, ObjectResult};
    use crate::post::BinaryMask;

    #[test]
    fn one_line_per_visible_object_with_one_based_frames() {
        let mut mask = BinaryMask::empty(8, 6);
        for y in 1..4 {
            for x in 2..7 {
                mask.data[y * 8 + x] = 1;
            }
        }
        let object = |id: u8, mask: BinaryMask| ObjectResult {
            id,
            category: id as u32,
            box_xyxy: mask.bbox_xyxy(),
            score: 0.73456,
            pred_iou: 0.9,
            area: mask.area(),
            mask,
        };
        let result = FrameObjects {
            width: 8,
            height: 6,
            labels: vec![0; 48],
            objects: vec![object(3, mask), object(4, BinaryMask::empty(8, 6))],
        };
        let image = image::RgbImage::new(8, 6);
        let f = FrameRecord {
            seq: 0,
            index: 9,
            name: "00009",
            file: None,
            image: &image,
            result: &result,
            record: std::cell::OnceCell::new(),
        };
        assert_eq!(lines(&f), "10,3,2,1,5,3,0.7346,-1,-1,-1\n");
    }
}
