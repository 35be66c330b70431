//! Label PNGs, read by prompts and eval and written by the masks sink: DAVIS-style palette PNGs (pixel
//! value = object id). The palette is the one DAVIS and PASCAL VOC use (bit-interleaved colours), so the
//! files open in their tools.

use std::path::Path;

use crate::error::Error;

/// Colour of palette index `i`: bits of `i` spread over the high bits of R, G and B.
pub fn color(i: u8) -> [u8; 3] {
    let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
    let mut c = i;
    for j in 0..8 {
        r |= (c & 1) << (7 - j);
        g |= ((c >> 1) & 1) << (7 - j);
        b |= ((c >> 2) & 1) << (7 - j);
        c >>= 3;
        if c == 0 {
            break;
        }
    }
    [r, g, b]
}

/// Writes `labels` (`width x height`, one byte per pixel) as an 8-bit palette PNG.
///
/// The PNG is encoded in memory and written in one go, so that a failed write (a full disk) is always
/// reported rather than lost in a buffered writer's drop.
pub fn write(path: &Path, width: u32, height: u32, labels: &[u8]) -> Result<(), Error> {
    let err = |what: &str, e: png::EncodingError| Error::Sink {
        path: path.to_path_buf(),
        msg: format!("{what}: {e}"),
    };
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, width, height);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    let palette: Vec<u8> = (0..=255u8).flat_map(color).collect();
    enc.set_palette(palette);
    let mut w = enc.write_header().map_err(|e| err("cannot encode", e))?;
    w.write_image_data(labels)
        .map_err(|e| err("cannot encode", e))?;
    w.finish().map_err(|e| err("cannot encode", e))?;
    std::fs::write(path, &bytes).map_err(|e| crate::sink::io_error(path, "cannot write", &e))
}

/// A label image as read from a PNG.
pub struct Labels {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// One value per pixel: the palette index for palette PNGs, the gray value for grayscale PNGs,
    /// 255 for any non-black pixel of an RGB(A) PNG.
    pub data: Vec<u8>,
}

/// Largest label PNG read, in pixels: checked from the header, before any pixel buffer is allocated.
pub const MAX_LABEL_PIXELS: u64 = 16384 * 16384;

/// Reads a palette, grayscale or RGB(A) PNG as labels, keeping palette indices (which decoders that
/// expand to RGB would lose).
pub fn read(path: &Path) -> Result<Labels, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::Frame {
        frame: path.display().to_string(),
        msg: format!("cannot open: {e}"),
    })?;
    decode_from(std::io::BufReader::new(file), path)
}

/// As [`read`], from the bytes of a PNG file; `path` names it in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Labels, Error> {
    decode_from(std::io::Cursor::new(bytes), path)
}

fn decode_from<R: std::io::BufRead + std::io::Seek>(
    input: R,
    path: &Path,
) -> Result<Labels, Error> {
    let err = |msg: String| Error::Frame {
        frame: path.display().to_string(),
        msg,
    };
    let mut dec = png::Decoder::new(input);
    dec.set_transformations(png::Transformations::STRIP_16);
    let mut reader = dec
        .read_info()
        .map_err(|e| err(format!("not a readable PNG ({e}); masks must be PNG files")))?;
    let (w, h) = (reader.info().width, reader.info().height);
    if (w as u64) * (h as u64) > MAX_LABEL_PIXELS {
        return Err(err(format!(
            "{w}x{h} is larger than the 16384x16384 limit for label PNGs"
        )));
    }
    let mut buf = vec![
        0;
        reader
            .output_buffer_size()
            .ok_or_else(|| err("image too large".into()))?
    ];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| err(format!("cannot decode: {e}")))?;
    let channels = match info.color_type {
        png::ColorType::Indexed | png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
    };
    let line = info.line_size;
    let bits = match info.bit_depth {
        png::BitDepth::One => 1,
        png::BitDepth::Two => 2,
        png::BitDepth::Four => 4,
        _ => 8,
    };
    let mut data = Vec::with_capacity((w * h) as usize);
    for y in 0..h as usize {
        let row = &buf[y * line..];
        if bits < 8 {
            // 1/2/4-bit samples (one channel): unpack, most significant bits first.
            let per = 8 / bits;
            for x in 0..w as usize {
                let byte = row[x / per];
                let shift = 8 - bits * (x % per + 1);
                data.push((byte >> shift) & ((1u8 << bits) - 1));
            }
            continue;
        }
        for x in 0..w as usize {
            let px = &row[x * channels..(x + 1) * channels];
            data.push(match channels {
                1 | 2 => px[0],
                _ => {
                    if px[..3].iter().any(|&v| v != 0) {
                        255
                    } else {
                        0
                    }
                }
            });
        }
    }
    Ok(Labels {
        width: w,
        height: h,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_matches_davis() {
        assert_eq!(color(0), [0, 0, 0]);
        assert_eq!(color(1), [128, 0, 0]);
        assert_eq!(color(2), [0, 128, 0]);
        assert_eq!(color(3), [128, 128, 0]);
        assert_eq!(color(4), [0, 0, 128]);
        assert_eq!(color(8), [64, 0, 0]);
    }

    #[test]
    fn write_then_read_keeps_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.png");
        let labels: Vec<u8> = (0..12).map(|i| (i % 4) as u8).collect();
        write(&p, 4, 3, &labels).unwrap();
        let back = read(&p).unwrap();
        assert_eq!((back.width, back.height), (4, 3));
        assert_eq!(back.data, labels);
    }
}
