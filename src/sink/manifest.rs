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

/// What a manifest belongs to; a resumed run must match it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    /// The manifest format version (1); the header is the file's first line.
    pub vprompt_manifest: u32,
    /// The model's identity (sha256 over `model.yaml` and its graphs).
    pub model: String,
    /// The job's resume key: a digest of its inputs (the bank, or the find job's prompts).
    pub bank: String,
    /// The settings that change results (job, source, sinks), as text.
    pub settings: String,
    /// `source.shard` (`I/N`), when the run reads one shard.
    pub shard: Option<String>,
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
            vprompt_manifest: 1,
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

    #[test]
    fn the_fuzz_seed_is_a_manifest_with_two_images() {
        let seed = include_bytes!("../../tests/fuzz/corpus/manifest/manifest.jsonl");
        let header = ManifestHeader {
            vprompt_manifest: 1,
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
