//! Turning an object's prompt into a binary mask on its reference frame: the mask PNG, the box filled,
//! disks at points, thick polylines for scribbles, disks carved out at negative points.

use super::file::ObjectPrompt;
use crate::error::Error;
use crate::palette;
use crate::post::BinaryMask;

/// Most pixel writes one object's scribbles may take to draw (long, very wide scribbles).
pub const MAX_SCRIBBLE_WORK: f64 = 1e9;

/// The pixels of a mask PNG that mark an object: those of `value`, or without one every non-zero pixel.
pub fn object_pixels(labels: &palette::Labels, value: Option<u8>) -> BinaryMask {
    let mut m = BinaryMask::empty(labels.width, labels.height);
    for (d, &v) in m.data.iter_mut().zip(&labels.data) {
        *d = match value {
            Some(want) => (v == want) as u8,
            None => (v != 0) as u8,
        };
    }
    m
}

/// Rasterises `o` on a `width x height` frame; errors name the object, the frame and the fix.
pub fn rasterize(o: &ObjectPrompt, width: u32, height: u32) -> Result<BinaryMask, Error> {
    let err = |msg: String| Error::Object {
        id: o.id,
        frame: o.frame,
        msg,
    };
    let mut m = BinaryMask::empty(width, height);
    let (fw, fh) = (width as f32, height as f32);
    let inside = |p: [f32; 2]| p[0] >= 0.0 && p[1] >= 0.0 && p[0] <= fw && p[1] <= fh;
    if let Some(path) = &o.mask {
        let labels = palette::read(path).map_err(|e| err(e.to_string()))?;
        if (labels.width, labels.height) != (width, height) {
            return Err(err(format!(
                "mask {} is {}x{} but the frame is {width}x{height}; the mask must match the frame's size",
                path.display(),
                labels.width,
                labels.height
            )));
        }
        m = object_pixels(&labels, o.mask_value);
        if m.area() == 0 {
            return Err(err(format!(
                "mask {} has no pixel for this object{}; it must mark the object",
                path.display(),
                o.mask_value
                    .map(|v| format!(" (value {v})"))
                    .unwrap_or_default()
            )));
        }
    }
    if let Some(b) = o.box_xyxy {
        if !inside([b[0], b[1]]) || !inside([b[2], b[3]]) {
            return Err(err(format!(
                "box {b:?} lies outside the {width}x{height} frame"
            )));
        }
        let (x0, y0) = (b[0].floor() as u32, b[1].floor() as u32);
        let (x1, y1) = (
            (b[2].ceil() as u32).min(width),
            (b[3].ceil() as u32).min(height),
        );
        for y in y0..y1 {
            for x in x0..x1 {
                m.data[(y * width + x) as usize] = 1;
            }
        }
    }
    let radius = (width.max(height) as f32 * 0.01).max(3.0);
    for &p in &o.points {
        if !inside(p) {
            return Err(err(format!(
                "point {p:?} lies outside the {width}x{height} frame"
            )));
        }
        disk(&mut m, p, radius, 1);
    }
    for s in &o.scribbles {
        for &p in &s.points {
            if !inside(p) {
                return Err(err(format!(
                    "scribble point {p:?} lies outside the {width}x{height} frame"
                )));
            }
        }
    }
    let work: f64 = o
        .scribbles
        .iter()
        .map(|s| {
            let r = (s.width / 2.0).max(0.5) as f64;
            let area = ((2.0 * r + 2.0).powi(2)).min(width as f64 * height as f64);
            let steps: f64 = s
                .points
                .windows(2)
                .map(|seg| {
                    let len =
                        ((seg[1][0] - seg[0][0]) as f64).hypot((seg[1][1] - seg[0][1]) as f64);
                    (len / (r * 0.5).max(0.5)).ceil() + 1.0
                })
                .sum();
            (steps + 1.0) * area
        })
        .sum();
    if work > MAX_SCRIBBLE_WORK {
        return Err(err(format!(
            "the scribbles would take {work:.0} pixel writes to draw, more than {MAX_SCRIBBLE_WORK:.0}; \
             use thinner or fewer scribbles, or give the region as a mask PNG"
        )));
    }
    for s in &o.scribbles {
        let r = s.width / 2.0;
        disk(&mut m, s.points[0], r, 1);
        for seg in s.points.windows(2) {
            let (a, b) = (seg[0], seg[1]);
            let len = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
            let steps = (len / (r * 0.5).max(0.5)).ceil() as usize;
            for k in 0..=steps {
                let t = k as f32 / steps.max(1) as f32;
                disk(
                    &mut m,
                    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t],
                    r,
                    1,
                );
            }
        }
    }
    for &p in &o.negative_points {
        if !inside(p) {
            return Err(err(format!(
                "negative point {p:?} lies outside the {width}x{height} frame"
            )));
        }
        disk(&mut m, p, radius, 0);
    }
    if m.area() == 0 {
        return Err(err("the prompt covers no pixel of the frame".into()));
    }
    Ok(m)
}

fn disk(m: &mut BinaryMask, c: [f32; 2], r: f32, value: u8) {
    let r = r.max(0.5);
    let (x0, x1) = (
        (c[0] - r).floor().max(0.0) as u32,
        ((c[0] + r).ceil() as u32).min(m.width),
    );
    let (y0, y1) = (
        (c[1] - r).floor().max(0.0) as u32,
        ((c[1] + r).ceil() as u32).min(m.height),
    );
    for y in y0..y1 {
        for x in x0..x1 {
            let (dx, dy) = (x as f32 + 0.5 - c[0], y as f32 + 0.5 - c[1]);
            if dx * dx + dy * dy <= r * r {
                m.data[(y * m.width + x) as usize] = value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(text: &str) -> ObjectPrompt {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn box_fills_its_pixels() {
        let m = rasterize(&prompt("{ id: 1, box: [2, 3, 6, 5] }"), 10, 10).unwrap();
        assert_eq!(m.area(), 8);
        assert_eq!(m.bbox_xyxy(), Some([2, 3, 6, 5]));
    }

    #[test]
    fn negative_point_carves_the_box() {
        let m = rasterize(
            &prompt("{ id: 1, box: [0, 0, 100, 100], negative_points: [[50, 50]] }"),
            100,
            100,
        )
        .unwrap();
        assert_eq!(m.data[50 * 100 + 50], 0);
        assert_eq!(m.data[0], 1);
    }

    #[test]
    fn scribble_is_a_thick_line() {
        let m = rasterize(
            &prompt("{ id: 1, scribbles: [{ points: [[10, 50], [90, 50]], width: 4 }] }"),
            100,
            100,
        )
        .unwrap();
        assert_eq!(m.data[50 * 100 + 50], 1);
        assert_eq!(m.data[40 * 100 + 50], 0);
        let b = m.bbox_xyxy().unwrap();
        assert!(b[0] <= 9 && b[2] >= 91 && b[3] - b[1] <= 5, "{b:?}");
    }

    #[test]
    fn outside_coordinates_are_errors() {
        let e =
            rasterize(&prompt("{ id: 3, frame: 7, points: [[120, 5]] }"), 100, 100).unwrap_err();
        assert!(e.to_string().contains("object 3 on frame 7"), "{e}");
        assert!(e.to_string().contains("outside the 100x100 frame"), "{e}");
    }
}
