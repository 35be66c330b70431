//! Jobs: what the runner computes on each frame, behind one trait. The runner knows no job by name: it
//! asks the job which queries the model workers decode, whether its step may run in the worker pool
//! (stateless) or must see the frames in order, and whether finished images are worth recording for a
//! later run to resume from. `propagate` and `autolabel` are the two built in; a library user may bring a
//! third through [`crate::pipeline::Pipeline::job`].

use std::path::PathBuf;
use std::sync::Arc;

use image::RgbImage;

use crate::bank::Bank;
use crate::decode::{FrameObjects, Labeler, Tracker};
use crate::error::{Error, Result};
use crate::model::{Features, Letterbox, Model, Queries, QueryAnchor};
use crate::post::PointGrid;
use crate::prompt::PromptFile;
use crate::source::FrameRange;
use crate::spec::{JobKind, PipelineSpec};

/// One frame as a job's step sees it: the decoded image, its letterbox, the encoder's features and the
/// decoder's queries (for the job's [`Job::anchors`]).
pub struct FrameInput<'a> {
    /// Index in the source.
    pub index: u64,
    /// The decoded frame, in frame pixels.
    pub image: &'a RgbImage,
    /// How the frame sits in the model input (maps boxes and masks back to frame pixels).
    pub letterbox: &'a Letterbox,
    /// The encoder's outputs for the frame (batch 1).
    pub features: &'a Features,
    /// The decoder's queries for the frame: the generic ones, then [`Job::anchors`]' rows times levels.
    pub queries: &'a Queries,
}

/// A per-frame step that needs nothing from other frames; the model workers run it side by side.
pub trait FrameStep: Send + Sync {
    /// The frame's results, from this frame alone.
    fn step(&self, frame: &FrameInput<'_>) -> Result<FrameObjects>;
}

/// What a run computes per frame.
pub trait Job: Send {
    /// The interactive query rows the model workers decode on every frame (the point grid, say).
    fn anchors(&self) -> Vec<QueryAnchor>;

    /// `(id, name)` of every object or class results are labelled with (COCO categories, YOLO classes).
    fn categories(&self) -> Vec<(u32, String)>;

    /// The step, when it is stateless: the worker pool runs it right after the model, out of order, and
    /// [`Job::step`] is never called.
    fn pooled(&self) -> Option<Arc<dyn FrameStep>> {
        None
    }

    /// The step of a job whose frames depend on earlier ones, called in frame order.
    fn step(&mut self, frame: &FrameInput<'_>) -> Result<FrameObjects>;

    /// For a job over independent images: what its results depend on besides the run's settings (a
    /// digest of its inputs). With `Some`, finished images go to a manifest, and a later run with the same
    /// settings and key skips them (resume).
    fn resume_key(&self) -> Option<String> {
        None
    }

    /// Checks the source's frame count (when a frame folder tells it) before the first frame is read.
    fn check_length(&self, _frames: u64) -> Result<()> {
        Ok(())
    }

    /// Called after the last frame of a run that ran to its end (not stopped), with the frames read.
    fn finish(&mut self, _frames_read: u64) -> Result<()> {
        Ok(())
    }
}

/// Starts a planned job once the model is loaded.
pub type JobStart = Box<dyn FnOnce(Arc<Model>) -> Result<Box<dyn Job>> + Send>;

/// Reads and checks what the spec's job needs (prompts, bank) before the model is loaded, so that a
/// mistake there is reported without waiting for it.
pub fn plan(spec: &PipelineSpec) -> Result<JobStart> {
    match spec.job.kind {
        JobKind::Propagate => Propagate::plan(spec, false),
        JobKind::Find => Propagate::plan(spec, true),
        JobKind::Autolabel => Autolabel::plan(spec),
    }
}

/// Video object propagation: the prompt file's objects, followed frame by frame. Also `find`: objects
/// marked on reference images, looked for in every image on its own (no memory carried from one image to
/// the next, so the order does not matter and a run can resume or be sharded).
struct Propagate {
    tracker: Tracker,
    prompts_path: PathBuf,
    anchors: Vec<QueryAnchor>,
    /// `find`: the digest of the prompts and their reference files.
    resume: Option<String>,
}

impl Propagate {
    fn plan(spec: &PipelineSpec, find: bool) -> Result<JobStart> {
        let path = spec.prompts.clone().unwrap_or_default();
        let prompts = PromptFile::load(&path)?;
        let mut job = spec.job.clone();
        let resume = if find {
            if let Some(o) = prompts.objects.iter().find(|o| o.image.is_none()) {
                return Err(Error::Prompt {
                    path,
                    msg: format!(
                        "object {} is on frame {}; the find job takes objects marked on reference \
                         images (`image:`)",
                        o.id, o.frame
                    ),
                });
            }
            job.memory = 0;
            Some(prompts_digest(&path, &prompts)?)
        } else {
            None
        };
        let range = FrameRange::from_spec(&spec.source);
        if let Some(o) = prompts
            .objects
            .iter()
            .find(|o| o.image.is_none() && range.admit(o.frame) != Some(true))
        {
            return Err(Error::Prompt {
                path,
                msg: format!(
                    "object {}: frame {} is not read with source start {}, end {:?}, stride {}; \
                     pick a reference frame inside the range",
                    o.id, o.frame, range.start, range.end, range.stride
                ),
            });
        }
        Ok(Box::new(move |model: Arc<Model>| {
            let anchors = PointGrid::new(model.spec.queries.grid).anchors();
            Ok(Box::new(Propagate {
                tracker: Tracker::new(model, job, prompts),
                prompts_path: path,
                anchors,
                resume,
            }) as Box<dyn Job>)
        }))
    }
}

impl Job for Propagate {
    fn anchors(&self) -> Vec<QueryAnchor> {
        self.anchors.clone()
    }

    fn categories(&self) -> Vec<(u32, String)> {
        self.tracker
            .prompts()
            .ids()
            .into_iter()
            .map(|id| (id as u32, format!("object {id}")))
            .collect()
    }

    fn step(&mut self, f: &FrameInput<'_>) -> Result<FrameObjects> {
        self.tracker
            .step(f.index, f.image, f.letterbox, f.features, f.queries)
    }

    fn check_length(&self, frames: u64) -> Result<()> {
        self.tracker
            .prompts()
            .check_frames(frames, &self.prompts_path)
    }

    fn resume_key(&self) -> Option<String> {
        self.resume.clone()
    }

    fn finish(&mut self, frames_read: u64) -> Result<()> {
        match self.tracker.waiting().first() {
            Some((id, frame)) => Err(Error::Prompt {
                path: self.prompts_path.clone(),
                msg: format!(
                    "object {id}: its reference frame {frame} was never read (the source ended after \
                     {frames_read} frames)"
                ),
            }),
            None => Ok(()),
        }
    }
}

/// sha256 over the prompt file and every reference image and mask it names: a resumed `find` must look
/// for the same objects.
fn prompts_digest(path: &std::path::Path, prompts: &PromptFile) -> Result<String> {
    let files = std::iter::once(path.to_path_buf()).chain(
        prompts
            .objects
            .iter()
            .flat_map(|o| [o.image.clone(), o.mask.clone()])
            .flatten(),
    );
    crate::model::session::files_digest(files).map_err(|(f, e)| Error::Prompt {
        path: path.to_path_buf(),
        msg: format!("cannot read {}: {e}", f.display()),
    })
}

/// Dataset auto-labeling: every instance of a bank's classes, in independent images.
struct Autolabel {
    labeler: Arc<Labeler>,
    anchors: Vec<QueryAnchor>,
    categories: Vec<(u32, String)>,
    digest: String,
}

impl Autolabel {
    fn plan(spec: &PipelineSpec) -> Result<JobStart> {
        let path = spec.bank.clone().ok_or_else(|| Error::Spec {
            path: "job.kind".into(),
            msg: "autolabel needs `bank:` (a bank file from `vprompt bank build`)".into(),
        })?;
        let bank = Bank::load(&path)?;
        let job = spec.job.clone();
        Ok(Box::new(move |model: Arc<Model>| {
            bank.check_model(&model, &path)?;
            let classes = bank.class_embeddings(job.exemplars_per_class, job.seed);
            let categories = classes.iter().map(|c| (c.id, c.name.clone())).collect();
            let anchors = Labeler::anchors(&job);
            let labeler = Labeler::new(model, classes, job).map_err(|e| match e {
                Error::Runtime(msg) => Error::Prompt { path, msg },
                e => e,
            })?;
            Ok(Box::new(Autolabel {
                labeler: Arc::new(labeler),
                anchors,
                categories,
                digest: bank.digest(),
            }) as Box<dyn Job>)
        }))
    }
}

impl FrameStep for Labeler {
    fn step(&self, f: &FrameInput<'_>) -> Result<FrameObjects> {
        self.label(f.letterbox, f.features, f.queries)
    }
}

impl Job for Autolabel {
    fn anchors(&self) -> Vec<QueryAnchor> {
        self.anchors.clone()
    }

    fn categories(&self) -> Vec<(u32, String)> {
        self.categories.clone()
    }

    fn pooled(&self) -> Option<Arc<dyn FrameStep>> {
        Some(self.labeler.clone())
    }

    fn step(&mut self, f: &FrameInput<'_>) -> Result<FrameObjects> {
        FrameStep::step(self.labeler.as_ref(), f)
    }

    fn resume_key(&self) -> Option<String> {
        Some(self.digest.clone())
    }
}
