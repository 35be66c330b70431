//! A text file written line by line for sinks that a reader may follow during a run (JSONL, MOT): a
//! line that cannot be written whole (a full disk) is cut off again, so the file always ends with a
//! complete line.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use super::{create_parent, io_error};
use crate::error::Error;

/// A text file that holds only complete lines, also after a failed write.
pub struct LineFile {
    path: PathBuf,
    out: std::fs::File,
    /// Bytes of complete lines written.
    len: u64,
}

impl LineFile {
    /// A new, empty file (an existing one is replaced).
    pub fn create(path: &Path) -> Result<Self, Error> {
        create_parent(path)?;
        let out = std::fs::File::create(path).map_err(|e| io_error(path, "cannot create", &e))?;
        Ok(LineFile {
            path: path.to_path_buf(),
            out,
            len: 0,
        })
    }

    /// The file as it is (created when missing), written after its end.
    pub fn append(path: &Path) -> Result<Self, Error> {
        create_parent(path)?;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error(path, "cannot create", &e))?;
        let len = out
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| io_error(path, "cannot open", &e))?;
        Ok(LineFile {
            path: path.to_path_buf(),
            out,
            len,
        })
    }

    /// Writes `text` (whole lines); on failure the file is cut back to its last complete line.
    pub fn write(&mut self, text: &str) -> Result<(), Error> {
        if let Err(e) = self.out.write_all(text.as_bytes()) {
            // Best effort: a full disk still allows shrinking a file.
            let _ = self.out.set_len(self.len);
            let _ = self.out.seek(std::io::SeekFrom::Start(self.len));
            return Err(io_error(&self.path, "cannot write", &e));
        }
        self.len += text.len() as u64;
        Ok(())
    }

    /// Flushes the file; returns its path, as `Sink::finish` does.
    pub fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        self.out
            .flush()
            .map_err(|e| io_error(&self.path, "cannot write", &e))?;
        Ok(vec![self.path.clone()])
    }
}
