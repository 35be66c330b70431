//! Frame pixels <-> model-input pixels: the letterbox (resize the longer side to `size`, pad bottom/right)
//! and the normalised NCHW tensor. Masks go back through `post::mask`, using the same `Letterbox`.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::contract::InputSpec;

/// How one frame sits in the square model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Frame width, in frame pixels.
    pub frame_w: u32,
    /// Frame height, in frame pixels.
    pub frame_h: u32,
    /// Side of the model input, in model-input pixels.
    pub size: u32,
    /// The frame's extent inside the model input (the rest is padding).
    pub scaled_w: u32,
    /// The frame's height inside the model input, in model-input pixels (1..=`size`).
    pub scaled_h: u32,
}

impl Letterbox {
    /// The letterbox of a `frame_w x frame_h` frame in a `size x size` input: the longer side scaled to
    /// `size`, the other kept in proportion (rounded, at least 1), placed top-left.
    pub fn new(frame_w: u32, frame_h: u32, size: u32) -> Self {
        let long = frame_w.max(frame_h).max(1) as f64;
        let s = size as f64 / long;
        let scaled_w = ((frame_w as f64 * s).round() as u32).clamp(1, size);
        let scaled_h = ((frame_h as f64 * s).round() as u32).clamp(1, size);
        Letterbox {
            frame_w,
            frame_h,
            size,
            scaled_w,
            scaled_h,
        }
    }

    /// Frame pixel coordinates (continuous, corner at 0) -> model-input pixel coordinates.
    pub fn frame_to_input(&self, x: f32, y: f32) -> (f32, f32) {
        (
            x * self.scaled_w as f32 / self.frame_w as f32,
            y * self.scaled_h as f32 / self.frame_h as f32,
        )
    }

    /// Model-input pixels per frame pixel (x, y).
    pub fn scale(&self) -> (f32, f32) {
        (
            self.scaled_w as f32 / self.frame_w as f32,
            self.scaled_h as f32 / self.frame_h as f32,
        )
    }

    /// A normalised `cxcywh` box of the model input -> `xyxy` frame pixels, clipped to the frame.
    pub fn box_to_frame(&self, b: [f32; 4]) -> [f32; 4] {
        let s = self.size as f32;
        let (sx, sy) = self.scale();
        let (cx, cy, w, h) = (b[0] * s, b[1] * s, b[2] * s, b[3] * s);
        let fw = self.frame_w as f32;
        let fh = self.frame_h as f32;
        [
            ((cx - w / 2.0) / sx).clamp(0.0, fw),
            ((cy - h / 2.0) / sy).clamp(0.0, fh),
            ((cx + w / 2.0) / sx).clamp(0.0, fw),
            ((cy + h / 2.0) / sy).clamp(0.0, fh),
        ]
    }
}

/// Turns RGB frames into the model's input tensor, reusing its buffers between frames.
pub struct Preprocessor {
    resizer: Resizer,
    scaled: Vec<u8>,
    /// Normalised value of each 8-bit level, per channel.
    lut: Vec<[f32; 3]>,
    size: u32,
}

impl Preprocessor {
    /// A preprocessor for the model input `input` (its size, mean and std).
    pub fn new(input: &InputSpec) -> Self {
        let (mean, std) = (input.mean, input.std);
        let lut = (0..256)
            .map(|v| {
                let x = v as f32 / 255.0;
                [
                    (x - mean[0]) / std[0],
                    (x - mean[1]) / std[1],
                    (x - mean[2]) / std[2],
                ]
            })
            .collect();
        Preprocessor {
            resizer: Resizer::new(),
            scaled: Vec::new(),
            lut,
            size: input.size,
        }
    }

    /// Side of the square model input, in model-input pixels.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Writes the letterboxed, normalised `[3,S,S]` planes of `frame` into `out` (length `3*S*S`).
    pub fn fill(&mut self, frame: &RgbImage, out: &mut [f32]) -> Letterbox {
        let lb = Letterbox::new(frame.width(), frame.height(), self.size);
        let s = self.size as usize;
        assert_eq!(out.len(), 3 * s * s, "tensor buffer must be 3*S*S");
        let (sw, sh) = (lb.scaled_w as usize, lb.scaled_h as usize);
        self.scaled.resize(sw * sh * 3, 0);
        let resized = if sw == frame.width() as usize && sh == frame.height() as usize {
            self.scaled.copy_from_slice(frame.as_raw());
            true
        } else {
            let src = ImageRef::new(
                frame.width(),
                frame.height(),
                frame.as_raw(),
                PixelType::U8x3,
            );
            let dst =
                Image::from_slice_u8(lb.scaled_w, lb.scaled_h, &mut self.scaled, PixelType::U8x3);
            match (src, dst) {
                (Ok(src), Ok(mut dst)) => {
                    let opts = ResizeOptions::new()
                        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
                    self.resizer.resize(&src, &mut dst, &opts).is_ok()
                }
                _ => false,
            }
        };
        if !resized {
            // Unreachable for valid frames; fall back to the image crate rather than fail a run.
            let img = image::imageops::resize(
                frame,
                lb.scaled_w,
                lb.scaled_h,
                image::imageops::FilterType::Triangle,
            );
            self.scaled.copy_from_slice(img.as_raw());
        }
        out.fill(0.0);
        let plane = s * s;
        for y in 0..sh {
            let row = &self.scaled[y * sw * 3..(y + 1) * sw * 3];
            for x in 0..sw {
                let i = y * s + x;
                for c in 0..3 {
                    out[c * plane + i] = self.lut[row[x * 3 + c] as usize][c];
                }
            }
        }
        lb
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landscape_frame_fills_width_and_pads_bottom() {
        let lb = Letterbox::new(427, 240, 320);
        assert_eq!((lb.scaled_w, lb.scaled_h), (320, 180));
        let (x, y) = lb.frame_to_input(427.0, 240.0);
        assert!((x - 320.0).abs() < 1e-3 && (y - 180.0).abs() < 1e-3);
    }

    #[test]
    fn box_round_trip_to_frame_pixels() {
        let lb = Letterbox::new(640, 320, 320);
        // Model input covers the frame at half scale; a box at the centre of the scaled frame.
        let b = lb.box_to_frame([0.5, 0.25, 0.5, 0.5]);
        assert_eq!(b, [160.0, 0.0, 480.0, 320.0]);
    }

    #[test]
    fn tensor_is_normalised_and_padded_with_zero() {
        let spec = InputSpec {
            size: 32,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let mut pre = Preprocessor::new(&spec);
        let frame = RgbImage::from_pixel(64, 32, image::Rgb([255, 0, 128]));
        let mut out = vec![9.0; 3 * 32 * 32];
        let lb = pre.fill(&frame, &mut out);
        assert_eq!((lb.scaled_w, lb.scaled_h), (32, 16));
        assert!((out[0] - 1.0).abs() < 1e-6); // red 255 -> +1
        assert!((out[32 * 32] + 1.0).abs() < 1e-6); // green 0 -> -1
        assert!((out[2 * 32 * 32] - (128.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6);
        assert_eq!(out[20 * 32 + 3], 0.0); // padding row
    }
}
