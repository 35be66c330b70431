//! The auto-labeling manifest: a JSON Lines file in the output folder. The first line says which run it
//! belongs to (model, bank, settings, shard); every further line is one finished image with its
//! annotations, appended only after every other sink has written that image. A run started again with
//! the same settings reads it, skips those images and ends with the same outputs; a line cut short by a
//! kill is dropped and its image done again.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::record::ImageRecord;
use super::{create_parent, FrameRecord, Sink};
use crate::error::Error;
use crate::spec::{JobSpec, PipelineSpec, SinkSpec};

/// The manifest format a run writes. 2: `settings` is [`settings`]' canonical JSON; 1 held Rust
/// `Debug` text, so a version-1 manifest is refused (start it over with `--restart`).
pub const MANIFEST_VERSION: u32 = 2;

/// What a manifest belongs to; a resumed run must match it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    /// The manifest format version (1); the header is the file's first line.
    pub vprompt_manifest: u32,
    /// The model's identity (sha256 over `model.yaml` and its graphs).
    pub model: String,
    /// The job's resume key: a digest of its inputs (the bank, or the find job's prompts).
    pub bank: String,
    /// The settings that change results (job, source, sinks), as [`settings`] writes them.
    pub settings: String,
    /// `source.shard` (`I/N`), when the run reads one shard.
    pub shard: Option<String>,
}

/// The settings of a resumable run that change its results, as the manifest records them.
#[derive(Serialize)]
struct Settings<'a> {
    job: &'a JobSpec,
    source: SourceRange<'a>,
    sinks: &'a [SinkSpec],
}

/// The keys of `source` that say which frames are read (not how: reconnects, timeouts, shard).
#[derive(Serialize)]
struct SourceRange<'a> {
    images: &'a Option<String>,
    frames: &'a Option<PathBuf>,
    video: &'a Option<String>,
    start: u64,
    end: Option<u64>,
    stride: u64,
}

/// A manifest header's `settings`: the job (less `job.manifest`, where the record itself lives), the
/// source's input and frame range, and the sinks, as JSON with the spec's key names, keys sorted and
/// floats written shortest. It changes when a setting does, not when a type's fields are reordered or
/// its `Debug` output changes. The shard is the header's own field.
pub fn settings(spec: &PipelineSpec) -> Result<String, Error> {
    let mut job = spec.job.clone();
    job.manifest = None;
    let src = &spec.source;
    let settings = Settings {
        job: &job,
        source: SourceRange {
            images: &src.images,
            frames: &src.frames,
            video: &src.video,
            start: src.start,
            end: src.end,
            stride: src.stride,
        },
        sinks: &spec.sinks,
    };
    let err = |e: serde_json::Error| {
        Error::Runtime(format!(
            "the run's settings cannot be recorded in the manifest: {e}; use UTF-8 paths"
        ))
    };
    // Written once in field order (f32 as the shortest text that reads back), then read back into a
    // map with sorted keys and written again: the order of the fields no longer matters.
    let text = serde_json::to_string(&settings).map_err(err)?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(err)?;
    Ok(sorted(value).to_string())
}

/// `value` with the keys of every object in sorted order, whatever map serde_json is built with.
fn sorted(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(m) => {
            let mut pairs: Vec<(String, Value)> = m.into_iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(pairs.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        v => v,
    }
}

/// Appends finished images to the manifest.
pub struct ManifestSink {
    path: PathBuf,
    file: std::fs::File,
    last_sync: Instant,
}

/// Opens (or starts) the manifest at `path`; returns the images it already holds.
/// `restart` starts it over instead.
pub fn open(
    path: &Path,
    header: &ManifestHeader,
    restart: bool,
) -> Result<(ManifestSink, Vec<ImageRecord>), Error> {
    let err = |msg: String| Error::Sink {
        path: path.to_path_buf(),
        msg,
    };
    create_parent(path)?;
    let (previous, keep_bytes) = if path.exists() && !restart {
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
        read(BufReader::new(file), path, header)?
    } else {
        (Vec::new(), 0)
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| err(format!("cannot open: {e}")))?;
    // Drop whatever follows the last good line, then append after it.
    file.set_len(keep_bytes)
        .map_err(|e| err(format!("cannot truncate: {e}")))?;
    let mut sink = ManifestSink {
        path: path.to_path_buf(),
        file,
        last_sync: Instant::now(),
    };
    use std::io::Seek;
    sink.file
        .seek(std::io::SeekFrom::End(0))
        .map_err(|e| err(format!("cannot seek: {e}")))?;
    if keep_bytes == 0 {
        let line = serde_json::to_string(header).map_err(|e| err(e.to_string()))?;
        sink.append(&line)?;
    }
    Ok((sink, previous))
}

/// Reads a manifest that must belong to `header`: the images it records (each once), and how many bytes
/// of it are whole lines worth keeping (a line cut short by a kill, or a damaged tail, is dropped and its
/// images done again). `path` is the name errors give.
pub fn read(
    mut reader: impl BufRead,
    path: &Path,
    header: &ManifestHeader,
) -> Result<(Vec<ImageRecord>, u64), Error> {
    let err = |msg: String| Error::Sink {
        path: path.to_path_buf(),
        msg,
    };
    let mut previous = Vec::new();
    let mut keep_bytes = 0u64;
    let mut line = String::new();
    let mut first = true;
    let mut seen = BTreeSet::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| err(format!("cannot read: {e}")))?;
        if n == 0 || !line.ends_with('\n') {
            break; // the end, or a line cut short by a kill: done again
        }
        if first {
            let found: ManifestHeader = serde_json::from_str(&line)
                .map_err(|_| err("is not a vprompt manifest; use another output folder".into()))?;
            if &found != header {
                return Err(err(format!(
                    "belongs to a run with other settings ({}); use another output folder, or pass \
                     --restart to start over",
                    differences(&found, header)
                )));
            }
            first = false;
        } else {
            let Ok(r) = serde_json::from_str::<ImageRecord>(&line) else {
                break; // a damaged tail: everything after it is done again
            };
            if seen.insert(r.index) {
                previous.push(r);
            }
        }
        keep_bytes += n as u64;
    }
    Ok((previous, keep_bytes))
}

fn differences(a: &ManifestHeader, b: &ManifestHeader) -> String {
    let mut d = Vec::new();
    if a.model != b.model {
        d.push("model");
    }
    if a.bank != b.bank {
        d.push("bank");
    }
    if a.settings != b.settings {
        d.push("job, source or sinks");
    }
    if a.shard != b.shard {
        d.push("shard");
    }
    if a.vprompt_manifest != b.vprompt_manifest {
        d.push("manifest version");
    }
    format!("{} differ", d.join(", "))
}

impl ManifestSink {
    fn append(&mut self, line: &str) -> Result<(), Error> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        // One write per line: a kill leaves whole lines and at most one cut-short tail.
        self.file.write_all(&buf).map_err(|e| Error::Sink {
            path: self.path.clone(),
            msg: format!("cannot write: {e}"),
        })?;
        if self.last_sync.elapsed() > Duration::from_secs(5) {
            let _ = self.file.sync_data();
            self.last_sync = Instant::now();
        }
        Ok(())
    }
}

impl Sink for ManifestSink {
    fn write(&mut self, f: &FrameRecord<'_>) -> Result<(), Error> {
        let line = serde_json::to_string(f.record()).map_err(|e| Error::Sink {
            path: self.path.clone(),
            msg: format!("cannot encode: {e}"),
        })?;
        self.append(&line)
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        self.file.sync_all().map_err(|e| Error::Sink {
            path: self.path.clone(),
            msg: format!("cannot write: {e}"),
        })?;
        Ok(vec![self.path.clone()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::{BinaryMask, MaskRle};
    use crate::sink::record::AnnotationRecord;

    fn header(settings: &str) -> ManifestHeader {
        ManifestHeader {
            vprompt_manifest: MANIFEST_VERSION,
            model: "m".into(),
            bank: "b".into(),
            settings: settings.into(),
            shard: None,
        }
    }

    fn record(index: u64) -> ImageRecord {
        let mut m = BinaryMask::empty(4, 3);
        m.data[5] = 1;
        ImageRecord {
            index,
            name: format!("img{index}"),
            file: format!("img{index}.jpg"),
            width: 4,
            height: 3,
            annotations: vec![AnnotationRecord {
                category_id: 2,
                segmentation: MaskRle::encode(&m),
                area: 1,
                bbox: [1, 1, 1, 1],
                score: 0.5,
            }],
        }
    }

    #[test]
    fn resumes_whole_lines_and_drops_a_cut_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest.jsonl");
        let (mut sink, prev) = open(&p, &header("a"), false).unwrap();
        assert!(prev.is_empty());
        for i in [0, 3] {
            sink.append(&serde_json::to_string(&record(i)).unwrap())
                .unwrap();
        }
        drop(sink);
        // A kill in the middle of the next line.
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("{\"index\":7,\"na");
        std::fs::write(&p, &text).unwrap();
        let (mut sink, prev) = open(&p, &header("a"), false).unwrap();
        assert_eq!(prev, vec![record(0), record(3)]);
        sink.append(&serde_json::to_string(&record(7)).unwrap())
            .unwrap();
        drop(sink);
        let (_, prev) = open(&p, &header("a"), false).unwrap();
        assert_eq!(
            prev.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![0, 3, 7]
        );
        // Other settings are refused; --restart starts over.
        let e = open(&p, &header("b"), false).err().unwrap().to_string();
        assert!(
            e.contains("other settings") && e.contains("job, source or sinks"),
            "{e}"
        );
        let (_, prev) = open(&p, &header("b"), true).unwrap();
        assert!(prev.is_empty());
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 1);
    }

    const PIPE: &str = "source: { images: \"imgs/*.jpg\", end: 9 }\nmodel: m\nbank: b.json\njob: { kind: autolabel, score_threshold: 0.25 }\nsinks:\n  - { kind: coco, path: out/coco.json }\n  - { kind: contact_sheet, path: out/sheet.png }\n";

    fn spec(sets: &[&str]) -> PipelineSpec {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        PipelineSpec::parse(PIPE, Path::new("/p/pipe.yaml"), &sets).unwrap()
    }

    #[test]
    fn settings_are_sorted_json_that_changes_with_a_setting_only() {
        let a = settings(&spec(&[])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v["job"]["kind"], "autolabel");
        assert_eq!(v["job"]["score_threshold"].to_string(), "0.25");
        assert_eq!(v["job"]["labeler"]["nms_iou"].to_string(), "0.7");
        assert_eq!(v["source"]["end"], 9);
        assert_eq!(v["sinks"][1]["kind"], "contact_sheet");
        assert_eq!(v["sinks"][1]["count"], 16);
        // Keys sorted at every level: the order of a type's fields does not matter.
        assert!(a.starts_with("{\"job\":{\"exemplars_per_class\":16,\"focus\":{\"agreement\":1.0,"));
        assert!(a.contains("\"source\":{\"end\":9,\"frames\":null,\"images\":"));
        // The same settings give the same text; where the manifest lives and how the run is executed
        // do not count; a setting that changes results does.
        assert_eq!(settings(&spec(&[])).unwrap(), a);
        assert_eq!(
            settings(&spec(&[
                "job.manifest=/elsewhere/m.jsonl",
                "runtime.workers=3",
                "source.shard=1/2"
            ]))
            .unwrap(),
            a
        );
        for set in [
            "job.score_threshold=0.3",
            "job.labeler.grid=10",
            "source.end=10",
            "sinks.1.count=4",
        ] {
            assert_ne!(settings(&spec(&[set])).unwrap(), a, "{set}");
        }
    }

    #[test]
    fn the_fuzz_seed_is_a_manifest_with_two_images() {
        let seed = include_bytes!("../../tests/fuzz/corpus/manifest/manifest.jsonl");
        let header = ManifestHeader {
            vprompt_manifest: MANIFEST_VERSION,
            model: "m".into(),
            bank: "b".into(),
            settings: "s".into(),
            shard: None,
        };
        let (records, keep) = read(&seed[..], Path::new("seed"), &header).unwrap();
        assert_eq!(records.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(keep, seed.len() as u64);
        // Cut inside the last line: that image is done again.
        let (records, _) = read(&seed[..seed.len() - 5], Path::new("seed"), &header).unwrap();
        assert_eq!(records.len(), 1);
    }
}
