//! Odd and corrupt media as sources: each is read correctly, or ends as one clear error (or one failed
//! frame in the report) naming the file, in bounded memory. Fixtures are made here, with the `image`
//! crate, the ffmpeg CLI and (for CMYK JPEG) Python's PIL from `.deps/python`.

mod common;

use std::path::Path;

use common::*;
use vprompt::palette;

const SINKS: &str =
    "sinks:\n  - { kind: jsonl, path: out/r.jsonl }\n  - { kind: palette_png, dir: out/masks }\n";

fn frame(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        if x < w / 2 && y < h / 2 {
            image::Rgb([250, 10, 10])
        } else {
            image::Rgb([10, 10, 250])
        }
    })
}

fn run_ok(pipe: &Path) -> serde_json::Value {
    let o = vprompt(&["run", pipe.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    report(&pipe.parent().unwrap().join("out/report.json"))
}

fn errors(report: &serde_json::Value) -> Vec<String> {
    report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["frame"], e["error"]))
        .collect()
}

#[test]
fn a_truncated_mp4_without_its_index_is_refused_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("clip.mp4");
    test_pattern_video(&video, 50, 64, 48);
    let bytes = std::fs::read(&video).unwrap();
    // ffmpeg writes the index (moov) last: cutting the file loses it.
    std::fs::write(&video, &bytes[..bytes.len() / 2]).unwrap();
    let pipe = pipeline(tmp.path(), "video: clip.mp4", SINKS);
    let e = one_error(&vprompt(&["run", pipe.to_str().unwrap()]));
    assert!(
        e.contains("clip.mp4") && e.contains("cannot open it as a video"),
        "{e}"
    );
}

#[test]
fn a_truncated_mp4_with_its_index_first_keeps_the_frames_it_has() {
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("clip.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=25",
        "-frames:v",
        "50",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
        video.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&video).unwrap();
    std::fs::write(&video, &bytes[..bytes.len() * 6 / 10]).unwrap();
    let pipe = pipeline(tmp.path(), "video: clip.mp4", SINKS);
    let o = vprompt(&["run", pipe.to_str().unwrap(), "--quiet"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let r = report(&tmp.path().join("out/report.json"));
    let n = r["frames_written"].as_u64().unwrap();
    assert!((5..50).contains(&n), "{n} frames written");
    assert!(
        err.contains("clip.mp4") && err.contains("declares 50 frames") && err.contains("truncated"),
        "{err}"
    );
    // Every frame written is whole: its label PNG reads back at the video's size.
    for i in 0..n {
        let l = palette::read(&tmp.path().join(format!("out/masks/{i:05}.png"))).unwrap();
        assert_eq!((l.width, l.height), (64, 48));
    }
}

#[test]
fn zero_length_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("empty.mp4"), b"").unwrap();
    let pipe = pipeline(tmp.path(), "video: empty.mp4", SINKS);
    let e = one_error(&vprompt(&["run", pipe.to_str().unwrap()]));
    assert!(
        e.contains("empty.mp4") && e.contains("cannot open it as a video"),
        "{e}"
    );

    // A zero-length frame in a folder: that frame fails, named in the report; the others are written.
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in [0, 2, 3] {
        frame(40, 30)
            .save(frames.join(format!("{i:05}.png")))
            .unwrap();
    }
    std::fs::write(frames.join("00001.png"), b"").unwrap();
    let pipe = pipeline(tmp.path(), "frames: frames", SINKS);
    let r = run_ok(&pipe);
    assert_eq!(r["frames_written"].as_u64(), Some(3));
    assert_eq!(r["frames_failed"].as_u64(), Some(1));
    let errs = errors(&r);
    assert!(
        errs[0].contains("00001.png") && errs[0].contains("not a readable image"),
        "{errs:?}"
    );

    // Empty pipeline, prompt and mask files.
    std::fs::write(tmp.path().join("empty.yaml"), b"").unwrap();
    let e = one_error(&vprompt(&[
        "run",
        tmp.path().join("empty.yaml").to_str().unwrap(),
    ]));
    assert!(e.contains("empty.yaml"), "{e}");
    let pipe = pipeline(tmp.path(), "frames: frames", SINKS);
    write(tmp.path(), "prompts.yaml", "");
    let e = one_error(&vprompt(&["run", pipe.to_str().unwrap()]));
    assert!(e.contains("prompts.yaml"), "{e}");
    std::fs::write(tmp.path().join("mask.png"), b"").unwrap();
    write(
        tmp.path(),
        "prompts.yaml",
        "objects:\n  - { id: 1, frame: 0, mask: mask.png }\n",
    );
    let e = one_error(&vprompt(&["run", pipe.to_str().unwrap()]));
    assert!(
        e.contains("object 1") && e.contains("mask.png") && e.contains("not a readable PNG"),
        "{e}"
    );
}

#[test]
fn images_are_read_by_content_whatever_their_extension() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    frame(40, 30).save(frames.join("00000.png")).unwrap();
    // A PNG named .jpg reads as the PNG it is.
    frame(40, 30)
        .save_with_format(frames.join("00001.jpg"), image::ImageFormat::Png)
        .unwrap();
    let img = vprompt::source::read_rgb(&frames.join("00001.jpg"), 1 << 20).unwrap();
    assert_eq!(img, frame(40, 30));
    // A text file named .png is one failed frame, named.
    std::fs::write(frames.join("00002.png"), "not an image\n").unwrap();
    let pipe = pipeline(tmp.path(), "frames: frames", SINKS);
    let r = run_ok(&pipe);
    assert_eq!(r["frames_written"].as_u64(), Some(2));
    let errs = errors(&r);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("00002.png"), "{errs:?}");
}

#[test]
fn cmyk_jpeg_16_bit_png_and_grayscale_frames_are_converted_to_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    frame(40, 30).save(frames.join("00000.png")).unwrap();
    // CMYK JPEG (Adobe, inverted, as Photoshop and PIL write it): red and blue quarters.
    let made = python()
        .arg("-c")
        .arg(
            "import sys; from PIL import Image\n\
             im = Image.new('RGB', (40, 30), (10, 10, 250))\n\
             im.paste((250, 10, 10), (0, 0, 20, 15))\n\
             im.convert('CMYK').save(sys.argv[1], quality=95)\n",
        )
        .arg(frames.join("00001.jpg"))
        .status()
        .unwrap();
    assert!(made.success(), "PIL writes the CMYK JPEG");
    // 16-bit RGB PNG.
    let deep = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(40, 30, |x, y| {
        let p = frame(40, 30).get_pixel(x, y).0;
        image::Rgb(p.map(|v| v as u16 * 257))
    });
    deep.save(frames.join("00002.png")).unwrap();
    // Grayscale PNG and JPEG.
    let gray =
        image::GrayImage::from_fn(40, 30, |x, _| image::Luma([if x < 20 { 200 } else { 30 }]));
    gray.save(frames.join("00003.png")).unwrap();
    gray.save(frames.join("00004.jpg")).unwrap();

    let read = |n: &str| vprompt::source::read_rgb(&frames.join(n), 1 << 20).unwrap();
    let close = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 12);
    for n in ["00001.jpg", "00002.png"] {
        let img = read(n);
        assert_eq!(img.dimensions(), (40, 30), "{n}");
        assert!(
            close(img.get_pixel(5, 5).0, [250, 10, 10]),
            "{n}: {:?}",
            img.get_pixel(5, 5)
        );
        assert!(
            close(img.get_pixel(35, 25).0, [10, 10, 250]),
            "{n}: {:?}",
            img.get_pixel(35, 25)
        );
    }
    for n in ["00003.png", "00004.jpg"] {
        let img = read(n);
        assert!(
            close(img.get_pixel(5, 5).0, [200, 200, 200]),
            "{n}: {:?}",
            img.get_pixel(5, 5)
        );
        assert!(
            close(img.get_pixel(35, 5).0, [30, 30, 30]),
            "{n}: {:?}",
            img.get_pixel(35, 5)
        );
    }
    let r = run_ok(&pipeline(tmp.path(), "frames: frames", SINKS));
    assert_eq!(r["frames_written"].as_u64(), Some(5), "{:?}", errors(&r));

    // A 16-bit grayscale mask works as a prompt: any non-zero pixel is the object.
    let mask = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(40, 30, |x, y| {
        image::Luma([if x < 20 && y < 15 { 65535 } else { 0 }])
    });
    mask.save(tmp.path().join("mask16.png")).unwrap();
    let l = palette::read(&tmp.path().join("mask16.png")).unwrap();
    assert_eq!(l.data.iter().filter(|&&v| v != 0).count(), 20 * 15);
    write(
        tmp.path(),
        "prompts.yaml",
        "objects:\n  - { id: 1, frame: 0, mask: mask16.png }\n",
    );
    let pipe = tmp.path().join("pipe.yaml");
    let o = vprompt(&["run", pipe.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = palette::read(&tmp.path().join("out/masks/00000.png")).unwrap();
    assert_eq!(first.data.iter().filter(|&&v| v == 1).count(), 20 * 15);
}

#[test]
fn a_header_claiming_40000x40000_is_refused_before_decoding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("images");
    std::fs::create_dir_all(&dir).unwrap();
    frame(40, 30).save(dir.join("a.png")).unwrap();
    std::fs::write(dir.join("b.png"), png_claiming(40_000, 40_000)).unwrap();
    frame(40, 30).save(dir.join("c.png")).unwrap();
    let r = run_ok(&pipeline(tmp.path(), "images: images", SINKS));
    assert_eq!(r["frames_written"].as_u64(), Some(2));
    let errs = errors(&r);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].contains("b.png")
            && errs[0].contains("40000x40000")
            && errs[0].contains("runtime.max_frame_pixels"),
        "{errs:?}"
    );
    // 40000 x 40000 RGB would be 4.8 GB: nothing near it was allocated.
    let rss = r["peak_rss_mib"].as_f64().unwrap();
    assert!(rss < 1000.0, "peak RSS {rss} MiB");

    // The same header as a prompt mask.
    std::fs::write(tmp.path().join("huge.png"), png_claiming(40_000, 40_000)).unwrap();
    let e = match palette::read(&tmp.path().join("huge.png")) {
        Ok(_) => panic!("a 40000x40000 mask was read"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("huge.png") && e.contains("40000x40000") && e.contains("limit"),
        "{e}"
    );

    // Video streams (raw YUV4MPEG): a header claiming 16000x16000 passes FFmpeg's own size check and is
    // refused by runtime.max_frame_pixels at open; 40000x40000 is refused by FFmpeg itself.
    for (side, says) in [
        (16_000, "runtime.max_frame_pixels"),
        (40_000, "cannot open it as a video"),
    ] {
        let name = format!("huge{side}.y4m");
        let mut bytes =
            format!("YUV4MPEG2 W{side} H{side} F25:1 Ip A1:1 C420jpeg\nFRAME\n").into_bytes();
        bytes.extend_from_slice(&[16; 64]);
        std::fs::write(tmp.path().join(&name), bytes).unwrap();
        let pipe = pipeline(tmp.path(), &format!("video: {name}"), SINKS);
        let e = one_error(&vprompt(&["run", pipe.to_str().unwrap()]));
        assert!(e.contains(&name) && e.contains(says), "{e}");
    }
}

#[test]
fn odd_frame_sizes_give_masks_of_that_size_and_an_even_padded_video() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..6 {
        frame(161, 121)
            .save(frames.join(format!("{i:05}.png")))
            .unwrap();
    }
    let sinks = format!("{SINKS}  - {{ kind: video, path: out/overlay.mp4 }}\n");
    let r = run_ok(&pipeline(tmp.path(), "frames: frames", &sinks));
    assert_eq!(r["frames_written"].as_u64(), Some(6));
    let l = palette::read(&tmp.path().join("out/masks/00005.png")).unwrap();
    assert_eq!((l.width, l.height), (161, 121));
    // yuv420p needs even sizes: the frame is padded by one column and one row.
    assert_eq!(ffprobe(&tmp.path().join("out/overlay.mp4")), (6, 162, 122));

    // An odd-sized source video (4:4:4 H.264 allows it).
    let video = tmp.path().join("odd.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=161x121:rate=25",
        "-frames:v",
        "8",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv444p",
        video.to_str().unwrap(),
    ]);
    let r = run_ok(&pipeline(tmp.path(), "video: odd.mp4", &sinks));
    assert_eq!(r["frames_written"].as_u64(), Some(8));
    let l = palette::read(&tmp.path().join("out/masks/00007.png")).unwrap();
    assert_eq!((l.width, l.height), (161, 121));
    assert_eq!(ffprobe(&tmp.path().join("out/overlay.mp4")), (8, 162, 122));
}

#[test]
fn a_variable_frame_rate_video_gives_every_frame_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("vfr.mp4");
    // 30 frames: the first 10 at 25 fps, the next 20 at 5 fps (timestamps jump), kept as they are.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=25",
        "-frames:v",
        "30",
        "-vf",
        "setpts='if(lt(N,10),N/25,0.4+(N-10)/5)/TB'",
        "-fps_mode",
        "vfr",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        video.to_str().unwrap(),
    ]);
    assert_eq!(ffprobe(&video).0, 30);
    let r = run_ok(&pipeline(tmp.path(), "video: vfr.mp4", SINKS));
    assert_eq!(r["frames_written"].as_u64(), Some(30));
    let frames: Vec<u64> = std::fs::read_to_string(tmp.path().join("out/r.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["frame"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(frames, (0..30).collect::<Vec<u64>>());
}

#[test]
fn tiny_and_thin_images_are_handled() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("images");
    std::fs::create_dir_all(&dir).unwrap();
    frame(40, 30).save(dir.join("a.png")).unwrap();
    frame(1, 1).save(dir.join("b.png")).unwrap();
    frame(2, 3000).save(dir.join("c.png")).unwrap();
    frame(3000, 1).save(dir.join("d.png")).unwrap();
    let r = run_ok(&pipeline(tmp.path(), "images: images", SINKS));
    assert_eq!(r["frames_written"].as_u64(), Some(4), "{:?}", errors(&r));
    let l = palette::read(&tmp.path().join("out/masks/c.png")).unwrap();
    assert_eq!((l.width, l.height), (2, 3000));
}
