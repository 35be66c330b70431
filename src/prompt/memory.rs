//! DINOv's video memory for one object: the first prompt's embedding pinned (or, for an object prompted on
//! several reference images, each of theirs), plus the most recent confident predictions re-encoded as
//! prompts on their own frames; a lookup averages them.

use std::collections::VecDeque;

/// One object's memory: its pinned reference embeddings plus up to `capacity` recent predictions'.
#[derive(Debug, Clone)]
pub struct ObjectMemory {
    pinned: Vec<Vec<f32>>,
    recent: VecDeque<Vec<f32>>,
    capacity: usize,
}

impl ObjectMemory {
    /// A memory pinned on the first prompt's embedding that keeps the `capacity` most recent
    /// predictions (`job.memory`; 0 keeps none).
    pub fn new(pinned: Vec<f32>, capacity: usize) -> Self {
        ObjectMemory {
            pinned: vec![pinned],
            recent: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Pins one more prompt's embedding (another reference of the same object).
    pub fn pin(&mut self, embed: Vec<f32>) {
        self.pinned.push(embed);
    }

    /// Adds a prediction's embedding, forgetting the oldest beyond capacity.
    pub fn remember(&mut self, embed: Vec<f32>) {
        if self.capacity == 0 {
            return;
        }
        if self.recent.len() == self.capacity {
            self.recent.pop_front();
        }
        self.recent.push_back(embed);
    }

    /// Mean of the pinned and recent embeddings, L2-normalised.
    pub fn lookup(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.pinned[0].len()];
        for e in self.pinned.iter().chain(&self.recent) {
            for (o, v) in out.iter_mut().zip(e) {
                *o += v;
            }
        }
        normalize(&mut out);
        out
    }
}

/// Scales `v` in place to unit L2 length; an all-zero `v` is left as it is.
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_pinned_and_the_most_recent() {
        let mut m = ObjectMemory::new(vec![1.0, 0.0], 2);
        m.remember(vec![0.0, 1.0]);
        m.remember(vec![0.0, 1.0]);
        m.remember(vec![-1.0, 0.0]);
        // pinned (1,0) + (0,1) + (-1,0) = (0,1)
        assert_eq!(m.lookup(), vec![0.0, 1.0]);
    }
}
