//! The prompt bank of the auto-labeling job: per class, every exemplar's prompt embedding and class
//! descriptor (its encoder features pooled inside its mask, `decode/proposals.rs`), tied to the model that
//! made them. At run time N exemplars per class are drawn (fixed seed) and averaged into one class
//! embedding (DINOv's generic prompt bank), and all of a class's descriptors into its prototype.

pub mod exemplars;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decode::proposals::{describe, descriptor_maps};
use crate::error::{Error, Result};
use crate::model::{Model, Preprocessor, Tensor};
use crate::post::mask::mask_to_input;
use crate::prompt::memory::normalize;
use crate::source::read_rgb;
pub use exemplars::ExemplarSet;

const FORMAT: &str = "vprompt-bank";
/// Version 2 added the exemplars' class descriptors.
const VERSION: u32 = 2;

/// A bank file (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bank {
    /// Always `vprompt-bank`; any other value is refused on load.
    pub format: String,
    /// The bank format version (2); other versions must be rebuilt with `vprompt bank build`.
    pub version: u32,
    /// The model's identity (sha256 over model.yaml and its graphs): a bank only fits that model.
    pub model: String,
    /// The model's `name` from its `model.yaml`, for messages.
    pub model_name: String,
    /// Embedding size.
    pub dim: usize,
    /// Class descriptor size.
    pub descriptor_dim: usize,
    /// The exemplar file it was built from.
    pub exemplars: String,
    /// The classes that got at least one exemplar, in category id order.
    pub classes: Vec<BankClass>,
}

/// One class of a bank and all its encoded exemplars.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BankClass {
    /// Category id, as in the exemplar file (COCO's `category_id`; 1.. in a YAML's class order).
    pub id: u32,
    /// Category name, written to the outputs' category lists.
    pub name: String,
    /// Every exemplar of the class (at least one).
    pub exemplars: Vec<Exemplar>,
}

/// One encoded exemplar of a bank class.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exemplar {
    /// Image file, as the exemplar file named it.
    pub image: String,
    /// Which annotation or object of the exemplar file.
    pub origin: String,
    /// The prompt encoder's embedding of the exemplar's mask (`dim` values, L2-normalised).
    pub embedding: Vec<f32>,
    /// The encoder features pooled inside the exemplar's mask (L2-normalised).
    pub descriptor: Vec<f32>,
}

/// One class as the labeler uses it.
#[derive(Debug, Clone)]
pub struct ClassEmbedding {
    /// Category id, as in the bank.
    pub id: u32,
    /// Category name, as in the bank.
    pub name: String,
    /// The mean prompt embedding of the drawn exemplars (L2-normalised).
    pub embedding: Vec<f32>,
    /// The mean descriptor of all the class's exemplars (L2-normalised).
    pub prototype: Vec<f32>,
}

impl Bank {
    /// Encodes every exemplar: its image through the encoder, its mask through the prompt encoder.
    pub fn build(model: &Model, set: &ExemplarSet) -> Result<Bank> {
        let mut pre = Preprocessor::new(&model.spec.input);
        let s = model.input_size() as usize;
        let names = &model.spec.classifier.descriptor;
        let mut classes: Vec<BankClass> = set
            .classes
            .iter()
            .map(|(id, name)| BankClass {
                id: *id,
                name: name.clone(),
                exemplars: Vec::new(),
            })
            .collect();
        let err = |msg: String| Error::Prompt {
            path: set.file.clone(),
            msg,
        };
        for img in &set.images {
            let rgb = read_rgb(
                &img.path,
                crate::spec::RuntimeSpec::default().max_frame_pixels,
            )?;
            let (w, h) = rgb.dimensions();
            if let Some((ew, eh)) = img.size {
                if (ew, eh) != (w, h) {
                    return Err(err(format!(
                        "image {} is {w}x{h} but the exemplar file says {ew}x{eh}",
                        img.path.display()
                    )));
                }
            }
            let (feats, lb) = model.encode_image(&mut pre, &rgb)?;
            let maps = descriptor_maps(&feats, names);
            // Prompts in chunks, so that a crowded image does not make one huge tensor.
            for chunk in img.objects.chunks(16) {
                let mut masks = Vec::with_capacity(chunk.len() * s * s);
                let mut descriptors = Vec::with_capacity(chunk.len());
                for o in chunk {
                    let m = o
                        .shape
                        .rasterize(w, h)
                        .map_err(|e| err(format!("{} on {}: {e}", o.origin, img.path.display())))?;
                    let input = mask_to_input(&m, &lb);
                    // An exemplar smaller than an input pixel is described at the centre of its box.
                    let at_centre = || {
                        let [x0, y0, x1, y1] = m.bbox_xyxy()?;
                        let (x, y) =
                            lb.frame_to_input((x0 + x1) as f32 / 2.0, (y0 + y1) as f32 / 2.0);
                        let mut dot = vec![0.0f32; s * s];
                        dot[(y as usize).min(s - 1) * s + (x as usize).min(s - 1)] = 1.0;
                        describe(&maps, &dot, s)
                    };
                    let descriptor = describe(&maps, &input, s).or_else(at_centre);
                    descriptors.push(descriptor.ok_or_else(|| {
                        err(format!(
                            "{} on {}: no class descriptor (the model has no feature map to pool; see \
                             `classifier.descriptor` in docs/model-contract.md)",
                            o.origin,
                            img.path.display()
                        ))
                    })?);
                    masks.extend(input);
                }
                let t = Tensor::new(vec![chunk.len(), 1, s, s], masks);
                let embeds = model.encode_prompts(&feats, &t)?;
                for ((o, e), descriptor) in chunk.iter().zip(embeds).zip(descriptors) {
                    let Some(c) = classes.iter_mut().find(|c| c.id == o.category) else {
                        continue;
                    };
                    c.exemplars.push(Exemplar {
                        image: img.path.display().to_string(),
                        origin: o.origin.clone(),
                        embedding: e,
                        descriptor,
                    });
                }
            }
        }
        classes.retain(|c| !c.exemplars.is_empty());
        let dim = classes
            .iter()
            .flat_map(|c| c.exemplars.first())
            .map(|e| e.embedding.len())
            .next()
            .unwrap_or(0);
        let descriptor_dim = classes
            .iter()
            .flat_map(|c| c.exemplars.first())
            .map(|e| e.descriptor.len())
            .next()
            .unwrap_or(0);
        Ok(Bank {
            format: FORMAT.into(),
            version: VERSION,
            model: model.identity.clone(),
            model_name: model.spec.name.clone(),
            dim,
            descriptor_dim,
            exemplars: set.file.display().to_string(),
            classes,
        })
    }

    /// Writes the bank atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::sink::create_parent(path)?;
        crate::sink::write_atomic(path, |tmp| {
            let text = serde_json::to_vec(self).map_err(|e| Error::Sink {
                path: path.to_path_buf(),
                msg: format!("cannot encode the bank: {e}"),
            })?;
            std::fs::write(tmp, text).map_err(|e| Error::Sink {
                path: path.to_path_buf(),
                msg: format!("cannot write: {e}"),
            })
        })
    }

    /// Reads and checks a bank file.
    pub fn load(path: &Path) -> Result<Bank> {
        let bytes = std::fs::read(path).map_err(|e| Error::Prompt {
            path: path.to_path_buf(),
            msg: format!("cannot read: {e}"),
        })?;
        Bank::parse(&bytes, path)
    }

    /// Parses and checks the bytes of a bank file; errors name `path`.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Bank> {
        let err = |msg: String| Error::Prompt {
            path: path.to_path_buf(),
            msg,
        };
        let bank: Bank = serde_json::from_slice(bytes).map_err(|e| {
            err(format!(
                "not a vprompt bank ({e}); make one with `vprompt bank build`"
            ))
        })?;
        if bank.format != FORMAT || bank.version != VERSION {
            return Err(err(format!(
                "format {} version {} is not {FORMAT} version {VERSION}; rebuild it with `vprompt bank build`",
                bank.format, bank.version
            )));
        }
        if bank.classes.is_empty() {
            return Err(err("holds no class".into()));
        }
        for c in &bank.classes {
            if c.exemplars.is_empty() {
                return Err(err(format!("class `{}` has no exemplar", c.name)));
            }
            if let Some(e) = c.exemplars.iter().find(|e| {
                e.embedding.len() != bank.dim || e.embedding.iter().any(|v| !v.is_finite())
            }) {
                return Err(err(format!(
                    "class `{}`: exemplar {} has an embedding that is not {} finite numbers",
                    c.name, e.origin, bank.dim
                )));
            }
            if let Some(e) = c.exemplars.iter().find(|e| {
                e.descriptor.len() != bank.descriptor_dim
                    || e.descriptor.iter().any(|v| !v.is_finite())
            }) {
                return Err(err(format!(
                    "class `{}`: exemplar {} has a descriptor that is not {} finite numbers",
                    c.name, e.origin, bank.descriptor_dim
                )));
            }
        }
        Ok(bank)
    }

    /// Refuses a bank made by another model: embeddings of different models do not compare.
    pub fn check_model(&self, model: &Model, path: &Path) -> Result<()> {
        if self.model != model.identity {
            return Err(Error::Prompt {
                path: path.to_path_buf(),
                msg: format!(
                    "this bank was built by model `{}` ({}), but the run uses `{}` ({}); rebuild the bank \
                     with `vprompt bank build --model {}`",
                    self.model_name,
                    short(&self.model),
                    model.spec.name,
                    short(&model.identity),
                    model.dir.display()
                ),
            });
        }
        Ok(())
    }

    /// One embedding per class: the mean of `n` exemplars drawn without replacement (all of them when a
    /// class has fewer), L2-normalised. The draw depends only on `seed` and the class id.
    pub fn class_embeddings(&self, n: usize, seed: u64) -> Vec<ClassEmbedding> {
        self.classes
            .iter()
            .map(|c| {
                let mut order: Vec<usize> = (0..c.exemplars.len()).collect();
                let mut rng = SplitMix(seed ^ (c.id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                for i in (1..order.len()).rev() {
                    let j = (rng.next() % (i as u64 + 1)) as usize;
                    order.swap(i, j);
                }
                let mut sum = vec![0.0f32; self.dim];
                for &k in order.iter().take(n.max(1)) {
                    for (s, v) in sum.iter_mut().zip(&c.exemplars[k].embedding) {
                        *s += v;
                    }
                }
                normalize(&mut sum);
                let mut prototype = vec![0.0f32; self.descriptor_dim];
                for e in &c.exemplars {
                    for (s, v) in prototype.iter_mut().zip(&e.descriptor) {
                        *s += v;
                    }
                }
                normalize(&mut prototype);
                ClassEmbedding {
                    id: c.id,
                    name: c.name.clone(),
                    embedding: sum,
                    prototype,
                }
            })
            .collect()
    }

    /// A short description: model, classes and exemplar counts.
    pub fn summary(&self, path: &Path) -> String {
        let mut s = format!(
            "bank {}\nmodel: {} ({})\nexemplars from: {}\nembedding size: {}, descriptor size: {}\nclasses: {}, exemplars: {}\n\n| id | class | exemplars |\n|---:|---|---:|\n",
            path.display(),
            self.model_name,
            short(&self.model),
            self.exemplars,
            self.dim,
            self.descriptor_dim,
            self.classes.len(),
            self.classes.iter().map(|c| c.exemplars.len()).sum::<usize>()
        );
        for c in &self.classes {
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                c.id,
                c.name,
                c.exemplars.len()
            ));
        }
        s
    }

    /// sha256 of the bank's content, recorded in an auto-labeling manifest.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        format!("{:x}", Sha256::digest(bytes))
    }
}

/// The first 12 characters of a model identity (characters, not bytes: a hand-edited bank may hold any text).
fn short(identity: &str) -> String {
    format!("sha256 {}", identity.chars().take(12).collect::<String>())
}

/// A small, fixed pseudo-random sequence (SplitMix64), so draws repeat on every machine.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Where `bank build` writes by default: beside the exemplar file.
pub fn default_path(exemplars: &Path) -> PathBuf {
    exemplars.with_extension("bank.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_identity_in_any_script_is_shortened_by_characters() {
        assert_eq!(short("0123456789abcdef"), "sha256 0123456789ab");
        // byte 12 falls inside the fourth character: a byte slice there panics
        assert_eq!(short("a模型模型模"), "sha256 a模型模型模");
        assert_eq!(
            short("a模型模型模型模型模型模型"),
            "sha256 a模型模型模型模型模型模"
        );
        assert_eq!(short("é"), "sha256 é");
    }

    fn bank(n: usize) -> Bank {
        Bank {
            format: FORMAT.into(),
            version: VERSION,
            model: "abc".into(),
            model_name: "m".into(),
            dim: 2,
            descriptor_dim: 3,
            exemplars: "e.json".into(),
            classes: vec![BankClass {
                id: 1,
                name: "a".into(),
                exemplars: (0..n)
                    .map(|k| Exemplar {
                        image: format!("{k}.jpg"),
                        origin: format!("annotation {k}"),
                        embedding: vec![k as f32, 1.0],
                        descriptor: vec![1.0, k as f32, 0.0],
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn draws_repeat_and_average() {
        let b = bank(40);
        let a1 = b.class_embeddings(16, 0);
        let a2 = b.class_embeddings(16, 0);
        assert_eq!(a1[0].embedding, a2[0].embedding);
        let other = b.class_embeddings(16, 1);
        assert_ne!(a1[0].embedding, other[0].embedding);
        // Fewer exemplars than n: all of them, whatever the seed.
        let small = bank(3);
        let e = small.class_embeddings(16, 5)[0].embedding.clone();
        let mut want = vec![3.0f32, 3.0];
        normalize(&mut want);
        assert_eq!(e, want);
    }

    #[test]
    fn load_checks_format_and_embeddings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.json");
        bank(2).save(&p).unwrap();
        assert_eq!(Bank::load(&p).unwrap().classes[0].exemplars.len(), 2);
        let mut bad = bank(2);
        bad.classes[0].exemplars[1].embedding = vec![1.0];
        bad.save(&p).unwrap();
        let e = Bank::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("annotation 1") && e.contains("2 finite numbers"),
            "{e}"
        );
        std::fs::write(&p, "{}").unwrap();
        let e = Bank::load(&p).unwrap_err().to_string();
        assert!(e.contains("not a vprompt bank"), "{e}");
    }

    #[test]
    fn the_fuzzers_seed_bank_is_a_valid_bank() {
        // The seed of the `bank` fuzz target must be accepted, so that its mutations start from the
        // checks' far side; it also carries a non-ASCII class name.
        let seed = include_bytes!("../../tests/fuzz/corpus/bank/bank.json");
        let b = Bank::parse(seed, Path::new("seed.json")).unwrap();
        assert_eq!(b.classes.len(), 2);
        assert_eq!(b.classes[1].name, "dog \u{fc}");
    }
}
