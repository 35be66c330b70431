//! Polygons and masks: COCO polygons rasterised exactly as pycocotools does (so that AP computed here
//! matches COCOeval on the same files), and a mask's outline as a polygon for YOLO-seg labels.

use super::mask::BinaryMask;

/// Column-major run lengths (COCO RLE, background first) of one polygon `[x0, y0, x1, y1, ...]` on a
/// `width x height` image, following pycocotools' rasteriser: the outline is walked on a 5x finer grid,
/// the points where it crosses a pixel column's centre become the run boundaries of that column.
pub fn polygon_runs(xy: &[f64], width: u32, height: u32) -> Vec<u32> {
    const SCALE: f64 = 5.0;
    let (w, h) = (width as i64, height as i64);
    let k = xy.len() / 2;
    if k == 0 || w == 0 || h == 0 {
        return vec![(w * h) as u32];
    }
    // Vertices on the fine grid, rounded half up (C's truncating cast after +0.5), closed. Coordinates
    // far outside the image (beyond its width plus height) are clamped there, so that the walk along the
    // outline stays bounded whatever a file says; real annotations never come near.
    let far = (w + h) as f64;
    let fine = |v: f64| (SCALE * v.clamp(-far, 2.0 * far) + 0.5) as i64;
    let xs: Vec<i64> = (0..=k).map(|j| fine(xy[2 * (j % k)])).collect();
    let ys: Vec<i64> = (0..=k).map(|j| fine(xy[2 * (j % k) + 1])).collect();

    // Every fine-grid point along every edge, stepping along the edge's longer axis.
    let mut u: Vec<i64> = Vec::new();
    let mut v: Vec<i64> = Vec::new();
    for j in 0..k {
        let (mut x0, mut x1, mut y0, mut y1) = (xs[j], xs[j + 1], ys[j], ys[j + 1]);
        let dx = (x1 - x0).abs();
        let dy = (y1 - y0).abs();
        let along_x = dx >= dy;
        let flip = (along_x && x0 > x1) || (!along_x && y0 > y1);
        if flip {
            std::mem::swap(&mut x0, &mut x1);
            std::mem::swap(&mut y0, &mut y1);
        }
        if along_x {
            let slope = if dx == 0 {
                0.0
            } else {
                (y1 - y0) as f64 / dx as f64
            };
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                u.push(t + x0);
                v.push((y0 as f64 + slope * t as f64 + 0.5) as i64);
            }
        } else {
            let slope = (x1 - x0) as f64 / dy as f64;
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                v.push(t + y0);
                u.push((x0 as f64 + slope * t as f64 + 0.5) as i64);
            }
        }
    }

    // Where the outline crosses a column centre: one boundary (x, first row inside or after) each.
    let mut starts: Vec<u64> = Vec::new();
    for j in 1..u.len() {
        if u[j] == u[j - 1] {
            continue;
        }
        let xf = if u[j] < u[j - 1] { u[j] } else { u[j] - 1 } as f64;
        let xd = (xf + 0.5) / SCALE - 0.5;
        if xd.floor() != xd || xd < 0.0 || xd > (w - 1) as f64 {
            continue;
        }
        let yf = v[j].min(v[j - 1]) as f64;
        let yd = ((yf + 0.5) / SCALE - 0.5).clamp(0.0, h as f64).ceil();
        starts.push(xd as u64 * h as u64 + yd as u64);
    }
    starts.push((w * h) as u64);
    starts.sort_unstable();

    // Differences between sorted boundaries are the runs; a zero-length run merges its neighbours.
    let mut deltas = Vec::with_capacity(starts.len());
    let mut prev = 0u64;
    for s in starts {
        deltas.push(s - prev);
        prev = s;
    }
    let mut runs: Vec<u32> = vec![deltas[0] as u32];
    let mut i = 1;
    while i < deltas.len() {
        if deltas[i] > 0 {
            runs.push(deltas[i] as u32);
            i += 1;
        } else {
            i += 1;
            if i < deltas.len() {
                if let Some(last) = runs.last_mut() {
                    *last += deltas[i] as u32;
                }
                i += 1;
            }
        }
    }
    runs
}

/// A mask from column-major runs (background first); runs beyond the image are ignored.
pub fn mask_from_runs(runs: &[u32], width: u32, height: u32) -> BinaryMask {
    let mut m = BinaryMask::empty(width, height);
    let (w, h) = (width as usize, height as usize);
    let total = w * h;
    let mut i = 0usize;
    for (k, &r) in runs.iter().enumerate() {
        let end = (i + r as usize).min(total);
        if k % 2 == 1 {
            for j in i..end {
                m.data[(j % h) * w + j / h] = 1;
            }
        }
        i = end;
    }
    m
}

/// The union of COCO polygons (each `[x0, y0, x1, y1, ...]`, at least 3 points) as a mask.
pub fn polygons_mask(polygons: &[Vec<f64>], width: u32, height: u32) -> BinaryMask {
    let mut m = BinaryMask::empty(width, height);
    for p in polygons.iter().filter(|p| p.len() >= 6) {
        let part = mask_from_runs(&polygon_runs(p, width, height), width, height);
        for (d, s) in m.data.iter_mut().zip(part.data) {
            *d |= s;
        }
    }
    m
}

/// The outline of a mask's largest region as a polygon in pixel coordinates, simplified to within
/// `tolerance` pixels (Douglas-Peucker); `None` for an empty mask or a region under 3 points.
pub fn outline(mask: &BinaryMask, tolerance: f64) -> Option<Vec<[f64; 2]>> {
    let [x0, y0, x1, y1] = mask.bbox_xyxy()?;
    // The box with a one-pixel margin, so that contours close inside the crop.
    let (ox, oy) = (x0 as i64 - 1, y0 as i64 - 1);
    let mut img = image::GrayImage::new(x1 - x0 + 2, y1 - y0 + 2);
    for y in y0..y1 {
        for x in x0..x1 {
            if mask.data[(y * mask.width + x) as usize] != 0 {
                img.put_pixel(x - x0 + 1, y - y0 + 1, image::Luma([255]));
            }
        }
    }
    let contours = imageproc::contours::find_contours::<i32>(&img);
    let best = contours
        .iter()
        .filter(|c| c.border_type == imageproc::contours::BorderType::Outer)
        .max_by(|a, b| shoelace(&a.points).total_cmp(&shoelace(&b.points)))?;
    let pts = if best.points.len() > 3 && tolerance > 0.0 {
        imageproc::geometry::approximate_polygon_dp(&best.points, tolerance, true)
    } else {
        best.points.clone()
    };
    // Pixel centres: a one-pixel region's outline would otherwise collapse to a point.
    (pts.len() >= 3).then(|| {
        pts.iter()
            .map(|p| {
                [
                    (p.x as i64 + ox) as f64 + 0.5,
                    (p.y as i64 + oy) as f64 + 0.5,
                ]
            })
            .collect()
    })
}

fn shoelace(points: &[imageproc::point::Point<i32>]) -> f64 {
    let n = points.len();
    let mut s = 0i64;
    for i in 0..n {
        let (a, b) = (points[i], points[(i + 1) % n]);
        s += a.x as i64 * b.y as i64 - b.x as i64 * a.y as i64;
    }
    (s as f64 / 2.0).abs() + n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::rle::runs_to_string;

    // Strings written by pycocotools 2.0.11:
    //   mask.frPyObjects([poly], h, w) then mask.merge(...)["counts"]
    #[test]
    fn polygons_rasterise_like_pycocotools() {
        // A triangle and a quadrilateral with fractional vertices on a 20x16 (w x h) image.
        let tri = vec![2.3, 1.7, 15.8, 4.2, 6.1, 13.9];
        assert_eq!(
            runs_to_string(&polygon_runs(&tri, 20, 16)),
            "b13=3M4M1NO1O1O1O1N3N1O1O]2"
        );
        let quad = vec![0.0, 0.0, 19.0, 0.0, 19.0, 15.0, 0.0, 15.0];
        assert_eq!(
            runs_to_string(&polygon_runs(&quad, 20, 16)),
            "0?100000000000000000000000000000000000`0"
        );
    }

    #[test]
    fn runs_round_trip_through_masks() {
        let tri = vec![2.3, 1.7, 15.8, 4.2, 6.1, 13.9];
        let runs = polygon_runs(&tri, 20, 16);
        let m = mask_from_runs(&runs, 20, 16);
        assert_eq!(crate::post::rle::runs(&m), runs);
        assert_eq!(m.area(), 75); // pycocotools: mask.area = 75
    }

    #[test]
    fn outline_follows_a_rectangle() {
        let mut m = BinaryMask::empty(30, 20);
        for y in 5..15 {
            for x in 4..24 {
                m.data[y * 30 + x] = 1;
            }
        }
        let p = outline(&m, 1.0).unwrap();
        assert_eq!(p.len(), 4, "{p:?}");
        let xs: Vec<f64> = p.iter().map(|q| q[0]).collect();
        let ys: Vec<f64> = p.iter().map(|q| q[1]).collect();
        assert_eq!(xs.iter().copied().fold(f64::MAX, f64::min), 4.5);
        assert_eq!(xs.iter().copied().fold(f64::MIN, f64::max), 23.5);
        assert_eq!(ys.iter().copied().fold(f64::MAX, f64::min), 5.5);
        assert_eq!(ys.iter().copied().fold(f64::MIN, f64::max), 14.5);
        assert!(outline(&BinaryMask::empty(5, 5), 1.0).is_none());
    }
}
