//! The interactive point grid: `g x g` cell centres, normalised to the model input, row-major.
//! The decoder turns each point into K granularity queries; query order is defined in the contract.

use crate::model::QueryAnchor;

/// A uniform grid of point queries (DINOv uses 20 x 20).
#[derive(Debug, Clone, PartialEq)]
pub struct PointGrid {
    /// Points per row and per column (g).
    pub side: usize,
    /// `(x, y)` in `[0,1]` of the model input; y outer, x inner.
    pub points: Vec<[f32; 2]>,
}

impl PointGrid {
    /// The `side x side` grid of cell centres, `((i + 0.5) / g, (j + 0.5) / g)`.
    pub fn new(side: usize) -> Self {
        let g = side as f32;
        let points = (0..side)
            .flat_map(|j| (0..side).map(move |i| [(i as f32 + 0.5) / g, (j as f32 + 0.5) / g]))
            .collect();
        PointGrid { side, points }
    }

    /// The grid as decoder query rows: `(x, y, 0, 0)`, points.
    pub fn anchors(&self) -> Vec<QueryAnchor> {
        self.points
            .iter()
            .map(|p| QueryAnchor::point(p[0], p[1]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_row_major_cell_centres() {
        let g = PointGrid::new(20);
        assert_eq!(g.points.len(), 400);
        assert_eq!(g.points[0], [0.025, 0.025]);
        assert_eq!(g.points[1], [0.075, 0.025]);
        assert_eq!(g.points[20], [0.025, 0.075]);
        assert_eq!(g.points[399], [0.975, 0.975]);
        let a = g.anchors();
        assert_eq!(a[1].cxcywh, [0.075, 0.025, 0.0, 0.0]);
        assert!(a.iter().all(|a| a.is_point()));
    }
}
