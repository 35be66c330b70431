//! Bounded mutation fuzzing of every parser that reads user bytes: the pipeline YAML (and `--set`), the
//! prompt file, `model.yaml`, label PNGs (prompt masks), frame images, exemplars, prompt banks, resume
//! manifests, the shards `vprompt merge` joins and the COCO files `vprompt eval` reads. The property: a parser returns
//! `Ok` or an error that names the file, and never panics (nor takes seconds on a small input).
//!
//! No cargo-fuzz (it needs nightly): each target replays its seed corpus in `tests/fuzz/corpus/<target>/`,
//! then mutates it (bit flips, interesting bytes, splices, dictionary tokens; PNG checksums re-computed so
//! that mutations reach past the CRC check) for `VPROMPT_FUZZ_SECS` seconds per target: 30 when `CI` is
//! set, 3 otherwise. The mutations follow `VPROMPT_FUZZ_SEED`: fixed when `CI` is set, drawn otherwise. Inputs that give a new kind of answer join the in-memory corpus. Targets share the
//! cores, so the wall time is about (targets x seconds) / cores. A failing input is saved under
//! `target/fuzz-failures/` with the seed to replay the run (`VPROMPT_FUZZ_SEED`); once fixed, copy the
//! input into the target's corpus folder so that it stays a regression test.
//!
//! Adding a target is one line in `TARGETS`: a name (its corpus folder), the file name errors must
//! mention, the function from bytes to a result, and a dictionary.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::crc32;
use vprompt::model::ModelSpec;
use vprompt::palette;
use vprompt::prompt::PromptFile;
use vprompt::source::decode_rgb;
use vprompt::PipelineSpec;

/// One parser under test.
struct Target {
    /// Also the corpus folder under `tests/fuzz/corpus/`.
    name: &'static str,
    /// The file name the parser is told; every error must name it.
    file: &'static str,
    run: fn(&[u8]) -> Result<(), vprompt::Error>,
    dict: &'static [&'static str],
    /// Whether inputs are PNG files whose chunk checksums should be made valid after mutation.
    png: bool,
}

const TARGETS: &[Target] = &[
    target("spec", "fuzz/pipe.yaml", spec, YAML, false),
    target("spec_set", "fuzz/pipe.yaml", spec_set, YAML, false),
    target("prompts", "fuzz/prompts.yaml", prompts, YAML, false),
    target("model_yaml", "fuzz/model.yaml", model_yaml, YAML, false),
    target("label_png", "fuzz/mask.png", label_png, PNG, true),
    target("image", "fuzz/frame.jpg", image, PNG, true),
    target(
        "exemplars_json",
        "fuzz/exemplars.json",
        exemplars_json,
        JSON,
        false,
    ),
    target(
        "exemplars_yaml",
        "fuzz/exemplars.yaml",
        exemplars_yaml,
        YAML,
        false,
    ),
    target("bank", "fuzz/bank.json", bank, JSON, false),
    target("manifest", "fuzz/manifest.jsonl", manifest, JSON, false),
    target("merge", "fuzz/shard.json", merge, JSON, false),
    target("eval_gt", "fuzz/gt.json", eval_gt, JSON, false),
    target("eval_pred", "fuzz/pred.json", eval_pred, JSON, false),
    target("prompts_gt", "fuzz/gt.json", prompts_gt, JSON, false),
];

/// A shard's COCO file, read as `vprompt merge` reads it.
fn merge(data: &[u8]) -> Result<(), vprompt::Error> {
    vprompt::sink::coco::read_shard(data, Path::new("fuzz/shard.json")).map(drop)
}

/// Ground truth of `vprompt eval coco`, scored against no predictions: every annotation is read and
/// drawn on its image.
fn eval_gt(data: &[u8]) -> Result<(), vprompt::Error> {
    use vprompt::eval::coco::{evaluate_json, Categories, Images};
    let pred = (&b"[]"[..], Path::new("pred.json"));
    let gt = (data, Path::new("fuzz/gt.json"));
    evaluate_json(pred, gt, &Categories::All, Images::All).map(drop)
}

/// Predictions of `vprompt eval coco` (a document or a results list), scored against the `eval_gt`
/// seed.
fn eval_pred(data: &[u8]) -> Result<(), vprompt::Error> {
    use vprompt::eval::coco::{evaluate_json, Categories, Images};
    const GT: &[u8] = include_bytes!("fuzz/corpus/eval_gt/gt.json");
    let pred = (data, Path::new("fuzz/pred.json"));
    let gt = (GT, Path::new("gt.json"));
    evaluate_json(pred, gt, &Categories::All, Images::Pred).map(drop)
}

/// Ground truth of `vprompt eval prompts`, read (the model's part needs images and a model).
fn prompts_gt(data: &[u8]) -> Result<(), vprompt::Error> {
    use vprompt::eval::prompts::{GroundTruth, Split};
    GroundTruth::parse(data, Path::new("fuzz/gt.json"), Split::Eval).map(drop)
}

/// A resume manifest (`manifest.jsonl`), read as a resumed autolabel or find run reads it; its header
/// must be this one (the seed's first line), so that mutations reach the image records.
fn manifest(data: &[u8]) -> Result<(), vprompt::Error> {
    let header = vprompt::sink::manifest::ManifestHeader {
        vprompt_manifest: vprompt::sink::manifest::MANIFEST_VERSION,
        model: "m".into(),
        bank: "b".into(),
        settings: "s".into(),
        shard: None,
    };
    vprompt::sink::manifest::read(data, Path::new("fuzz/manifest.jsonl"), &header).map(drop)
}

/// A prompt bank (`vprompt bank build`'s JSON), read as autolabel reads it.
fn bank(data: &[u8]) -> Result<(), vprompt::Error> {
    vprompt::bank::Bank::parse(data, Path::new("fuzz/bank.json")).map(drop)
}

/// Exemplars (COCO JSON or YAML), each then rasterised on a 64x48 image (polygons, RLE, boxes, prompts).
fn exemplars(data: &[u8], file: &str) -> Result<(), vprompt::Error> {
    let path = Path::new(file);
    let set = vprompt::bank::ExemplarSet::parse(data, path, Some(Path::new("fuzz")))?;
    for img in &set.images {
        for o in &img.objects {
            o.shape
                .rasterize(64, 48)
                .map_err(|msg| vprompt::Error::Prompt {
                    path: path.to_path_buf(),
                    msg,
                })?;
        }
    }
    Ok(())
}

fn exemplars_json(data: &[u8]) -> Result<(), vprompt::Error> {
    exemplars(data, "fuzz/exemplars.json")
}

fn exemplars_yaml(data: &[u8]) -> Result<(), vprompt::Error> {
    exemplars(data, "fuzz/exemplars.yaml")
}

const fn target(
    name: &'static str,
    file: &'static str,
    run: fn(&[u8]) -> Result<(), vprompt::Error>,
    dict: &'static [&'static str],
    png: bool,
) -> Target {
    Target {
        name,
        file,
        run,
        dict,
        png,
    }
}

fn spec(data: &[u8]) -> Result<(), vprompt::Error> {
    let text = String::from_utf8_lossy(data);
    PipelineSpec::parse(&text, Path::new("fuzz/pipe.yaml"), &[]).map(drop)
}

/// Each line of the input is a `--set key=value` applied to a valid pipeline.
fn spec_set(data: &[u8]) -> Result<(), vprompt::Error> {
    const BASE: &str = "source: { video: \"rtsp://h/c\", reconnect: { attempts: 2 } }\nmodel: m\nprompts: p.yaml\nsinks:\n  - { kind: jsonl, path: r.jsonl }\n  - { kind: video, path: o.mp4 }\n";
    let text = String::from_utf8_lossy(data);
    let sets: Vec<String> = text.lines().map(str::to_string).collect();
    PipelineSpec::parse(BASE, Path::new("fuzz/pipe.yaml"), &sets).map(drop)
}

fn prompts(data: &[u8]) -> Result<(), vprompt::Error> {
    PromptFile::parse(data, Path::new("fuzz/prompts.yaml")).map(drop)
}

fn model_yaml(data: &[u8]) -> Result<(), vprompt::Error> {
    let text = String::from_utf8_lossy(data);
    ModelSpec::parse(&text, Path::new("fuzz/model.yaml")).map(drop)
}

fn label_png(data: &[u8]) -> Result<(), vprompt::Error> {
    let l = palette::decode(data, Path::new("fuzz/mask.png"))?;
    assert_eq!(l.data.len() as u64, l.width as u64 * l.height as u64);
    Ok(())
}

fn image(data: &[u8]) -> Result<(), vprompt::Error> {
    // A small limit, so that mutated headers hit it often (the default is 8192 x 8192).
    let img = decode_rgb(data, Path::new("fuzz/frame.jpg"), 1 << 20)?;
    assert!(img.width() as u64 * img.height() as u64 <= 1 << 20);
    Ok(())
}

const YAML: &[&str] = &[
    ":",
    ": ",
    "\n",
    "\n  ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "#",
    "&a ",
    "*a",
    "<<: ",
    "!!str ",
    "!!binary ",
    "~",
    "null",
    "true",
    "-1",
    "0",
    "1e309",
    ".nan",
    "-.inf",
    "4294967296",
    "18446744073709551616",
    "0x7f",
    "255",
    "256",
    "source",
    "video",
    "frames",
    "images",
    "start",
    "end",
    "stride",
    "fps",
    "reconnect",
    "attempts",
    "backoff_ms",
    "stall_timeout_ms",
    "model",
    "prompts",
    "job",
    "kind",
    "min_iou",
    "sinks",
    "palette_png",
    "coco",
    "jsonl",
    "dir",
    "path",
    "runtime",
    "queue_capacity",
    "workers",
    "batch_size",
    "device",
    "cuda:",
    "threads",
    "on_error",
    "max_frame_pixels",
    "objects",
    "id",
    "frame",
    "mask",
    "mask_value",
    "box",
    "points",
    "negative_points",
    "scribbles",
    "width",
    "input",
    "size",
    "mean",
    "std",
    "queries",
    "generic",
    "grid",
    "levels",
    "classifier",
    "logit_scale",
    "graphs",
    "encoder",
    "decoder",
    "prompt_encoder",
    "file",
    "inputs",
    "outputs",
    "name",
    "type",
    "shape",
    "f32",
    "batch",
    "image",
    "mask_feat",
    "=",
    ".",
    "..",
    "sinks.0.",
    "runtime.",
    "\t",
    "\r\n",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
];

const JSON: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"images\"",
    "\"annotations\"",
    "\"categories\"",
    "\"id\"",
    "\"image_id\"",
    "\"category_id\"",
    "\"segmentation\"",
    "\"counts\"",
    "\"size\"",
    "\"bbox\"",
    "\"iscrowd\"",
    "\"file_name\"",
    "\"width\"",
    "\"height\"",
    "\"area\"",
    "\"score\"",
    "\"name\"",
    "\"frame_index\"",
    "\"info\"",
    "1e308",
    "-1",
    "0",
    "null",
    "4294967295",
];

const PNG: &[&str] = &[
    "IHDR",
    "PLTE",
    "IDAT",
    "IEND",
    "tRNS",
    "acTL",
    "fcTL",
    "fdAT",
    "iCCP",
    "\u{0}\u{0}\u{0}\u{0}",
    "\u{ff}\u{ff}\u{ff}\u{ff}",
    "\u{0}\u{0}\u{9c}\u{40}",
    "\u{1}",
    "\u{8}",
    "\u{10}",
    "\u{3}",
    "\u{6}",
    "\u{ff}\u{d8}",
    "\u{ff}\u{c0}",
    "\u{ff}\u{c2}",
    "\u{ff}\u{c4}",
    "\u{ff}\u{da}",
    "\u{ff}\u{d9}",
    "\u{ff}\u{ee}",
    "Adobe",
];

/// The seed when `CI` is set and `VPROMPT_FUZZ_SEED` is not (`.ci/run` sets the same one).
const CI_SEED: u64 = 20_261_203;

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// The targets whose every seed must read without error, so that mutations start from inputs that
/// reach the end of the parser rather than its first check (other targets' seeds may be errors on
/// purpose, or need files beside them).
const SEEDS_READ: &[&str] = &[
    "exemplars_json",
    "bank",
    "manifest",
    "merge",
    "eval_gt",
    "eval_pred",
    "prompts_gt",
];

#[test]
fn the_json_seeds_read() {
    for t in TARGETS.iter().filter(|t| SEEDS_READ.contains(&t.name)) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/corpus")
            .join(t.name);
        let seeds: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!seeds.is_empty(), "{}: no seed", dir.display());
        for s in seeds {
            if let Err(e) = (t.run)(&std::fs::read(&s).unwrap()) {
                panic!(
                    "fuzz target {}: the seed {} fails: {e}",
                    t.name,
                    s.display()
                );
            }
        }
    }
}

#[test]
fn every_parser_survives_mutated_input() {
    let secs: f64 = match std::env::var("VPROMPT_FUZZ_SECS") {
        Ok(v) => v.parse().expect("VPROMPT_FUZZ_SECS is a number of seconds"),
        Err(_) if in_ci() => 30.0,
        Err(_) => 3.0,
    };
    // CI replays one fixed seed (a failure there repeats on a developer's machine); elsewhere each run
    // draws a new one. Either way it is printed, and named by every failure.
    let seed: u64 = match std::env::var("VPROMPT_FUZZ_SEED") {
        Ok(v) => v.parse().expect("VPROMPT_FUZZ_SEED is a whole number"),
        Err(_) if in_ci() => CI_SEED,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(TARGETS.len());
    eprintln!(
        "fuzz: {} targets x {secs} s on {threads} threads, VPROMPT_FUZZ_SEED={seed}",
        TARGETS.len()
    );
    let next = Mutex::new(0usize);
    let failures = Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let Some(t) = TARGETS.get(i) else { break };
                let mut rng = Rng(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)));
                if let Err(e) = fuzz(t, Duration::from_secs_f64(secs), &mut rng) {
                    failures.lock().unwrap().push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "VPROMPT_FUZZ_SEED={seed}:\n{}",
        failures.join("\n")
    );
}

/// Replays the corpus, then mutates for `budget`; returns the first failure.
fn fuzz(t: &Target, budget: Duration, rng: &mut Rng) -> Result<(), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(t.name);
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    if corpus.is_empty() {
        return Err(format!("{}: the corpus is empty", dir.display()));
    }
    let mut seen = HashSet::new();
    for input in corpus.clone() {
        seen.insert(check(t, &input)?);
    }
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget {
        let mut input = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut input, &corpus, t.dict, rng);
        }
        input.truncate(64 << 10);
        if t.png && rng.below(10) != 0 {
            fix_png_checksums(&mut input);
        }
        let kind = check(t, &input)?;
        if seen.insert(kind) && corpus.len() < 4096 {
            corpus.push(input);
        }
        runs += 1;
    }
    eprintln!(
        "fuzz {}: {runs} inputs in {:.1} s, {} kinds of answer",
        t.name,
        started.elapsed().as_secs_f64(),
        seen.len()
    );
    Ok(())
}

/// Runs one input; returns a coarse name of the answer (`ok`, or the error without its numbers).
fn check(t: &Target, input: &[u8]) -> Result<String, String> {
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| (t.run)(input));
    let took = started.elapsed();
    let fail = |why: String| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let path: PathBuf = dir.join(format!("{}-{:016x}", t.name, hash(input)));
        let _ = std::fs::write(&path, input);
        format!(
            "fuzz target {}: {why}; input saved as {}",
            t.name,
            path.display()
        )
    };
    if took > Duration::from_secs(10) {
        return Err(fail(format!("one input took {took:?}")));
    }
    match outcome {
        Err(_) => Err(fail("the parser panicked".into())),
        Ok(Ok(())) => Ok("ok".into()),
        Ok(Err(e)) => {
            let msg = e.to_string();
            if !msg.contains(t.file) {
                return Err(fail(format!("the error does not name {}: {msg}", t.file)));
            }
            // The message up to the first quoted piece of input, without numbers; its two ends, where
            // long decoder messages differ.
            let rest = msg.replacen(t.file, "", 1);
            let key: Vec<char> = rest
                .chars()
                .take_while(|c| !matches!(c, '`' | '"' | '\''))
                .filter(|c| !c.is_ascii_digit())
                .collect();
            let n = key.len();
            Ok(if n <= 64 {
                key.iter().collect()
            } else {
                key[..32].iter().chain(&key[n - 32..]).collect()
            })
        }
    }
}

fn mutate(input: &mut Vec<u8>, corpus: &[Vec<u8>], dict: &[&str], rng: &mut Rng) {
    const INTERESTING: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, b'\n', b':', b'-', b'"', b'['];
    let len = input.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 if len > 0 => {
            let i = rng.below(len);
            input[i] = rng.next() as u8;
        }
        3 if len > 0 => {
            let a = rng.below(len);
            let n = 1 + rng.below((len - a).min(64));
            input.drain(a..a + n);
        }
        4 if len > 0 => {
            let a = rng.below(len);
            let n = 1 + rng.below((len - a).min(64));
            let piece: Vec<u8> = input[a..a + n].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, piece);
        }
        5 => {
            let other = &corpus[rng.below(corpus.len())];
            if !other.is_empty() {
                let a = rng.below(other.len());
                let n = 1 + rng.below((other.len() - a).min(256));
                let at = rng.below(len + 1);
                input.splice(at..at, other[a..a + n].iter().copied());
            }
        }
        6 if len >= 4 => {
            // A 32-bit big-endian number (PNG sizes and lengths) set to an edge value.
            let i = rng.below(len - 3);
            let v: u32 = [0, 1, 0x7fff_ffff, 0xffff_ffff, 40_000, 65_535, 1 << 16][rng.below(7)];
            input[i..i + 4].copy_from_slice(&v.to_be_bytes());
        }
        7 if len > 0 => {
            let i = rng.below(len);
            input.truncate(i);
        }
        _ => {
            let token = dict[rng.below(dict.len())].as_bytes();
            let at = rng.below(len + 1);
            // Tokens given as `\u{..}` escapes stand for single bytes (PNG and JPEG markers).
            let bytes: Vec<u8> = if token.iter().any(|b| *b >= 0x80) {
                std::str::from_utf8(token)
                    .unwrap()
                    .chars()
                    .map(|c| c as u32 as u8)
                    .collect()
            } else {
                token.to_vec()
            };
            input.splice(at..at, bytes);
        }
    }
}

/// Re-computes the CRC of every whole chunk of a PNG, so that mutated chunk data is decoded.
fn fix_png_checksums(data: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= data.len() {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = at.checked_add(8 + len) else {
            break;
        };
        if end + 4 > data.len() {
            break;
        }
        let crc = crc32(&data[at + 4..end]);
        data[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn png_checksums_are_fixed_after_mutation() {
    let mut png = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/label_png/gray.png"),
    )
    .unwrap();
    let good = png.clone();
    png[20] ^= 0x01; // inside IHDR: the stored CRC no longer matches
    fix_png_checksums(&mut png);
    assert_ne!(png[29..33], good[29..33], "the IHDR CRC was re-computed");
    png[20] ^= 0x01;
    fix_png_checksums(&mut png);
    assert_eq!(png, good);
}
