//! Post-processing: point grid, box NMS, masks from kept queries, edge-aware refinement, COCO RLE and
//! polygons, distances.
//! Matching queries to prompts is `decode/`; writing files is `sink/`.

pub mod distance;
pub mod grid;
pub mod guided;
pub mod mask;
pub mod nms;
pub mod poly;
pub mod rle;

pub use grid::PointGrid;
pub use mask::BinaryMask;
pub use rle::MaskRle;
