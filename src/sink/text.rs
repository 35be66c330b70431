//! Text on images: short labels ("person 0.87") in the 8x8 bitmap font of the `font8x8` crate (public
//! domain glyphs), white on a dark box so that they read on any picture.

use font8x8::{UnicodeFonts, BASIC_FONTS};
use image::{Rgb, RgbImage};

/// Height of a label's box in pixels (the 8-pixel glyphs and a 1-pixel margin).
pub const LABEL_H: u32 = 10;

/// Draws `text` with its box's top-left corner at `(x, y)`, moved inside the image where it would leave
/// it; characters the font lacks are drawn as `?`.
pub fn label(img: &mut RgbImage, x: i64, y: i64, text: &str, accent: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let chars: Vec<char> = text.chars().collect();
    let bw = 8 * chars.len() as i64 + 2;
    let bh = LABEL_H as i64;
    let x = x.min(w - bw).max(0);
    let y = y.min(h - bh).max(0);
    for py in y..(y + bh).min(h) {
        for px in x..(x + bw).min(w) {
            // A coloured stripe on the left ties the label to its instance's colour.
            let c = if px < x + 1 {
                accent
            } else {
                Rgb([16, 16, 16])
            };
            img.put_pixel(px as u32, py as u32, c);
        }
    }
    for (k, &ch) in chars.iter().enumerate() {
        let glyph = BASIC_FONTS
            .get(ch)
            .or_else(|| BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let (px, py) = (x + 2 + 8 * k as i64 + col, y + 1 + row as i64);
                    if (0..w).contains(&px) && (0..h).contains(&py) {
                        img.put_pixel(px as u32, py as u32, Rgb([255, 255, 255]));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_drawn_inside_the_image() {
        let mut img = RgbImage::from_pixel(40, 20, Rgb([200, 200, 200]));
        label(&mut img, 30, 15, "ab", Rgb([255, 0, 0]));
        // Moved left and up to fit: the box spans x 22..40, y 10..20.
        assert_eq!(*img.get_pixel(22, 10), Rgb([255, 0, 0]));
        assert_eq!(*img.get_pixel(23, 10), Rgb([16, 16, 16]));
        assert_eq!(*img.get_pixel(21, 10), Rgb([200, 200, 200]));
        // Some glyph pixels are white, and only inside the box.
        let white: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| **p == Rgb([255, 255, 255]))
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(white.len() > 10);
        assert!(white.iter().all(|&(x, y)| x >= 24 && y >= 11));
        // Too wide for the image: clipped, no panic.
        label(&mut img, 0, 0, "a long label", Rgb([0, 0, 255]));
    }
}
