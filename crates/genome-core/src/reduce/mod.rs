//! Dimension reduction for clustering: k-nearest-neighbour graphs (exact or HNSW) and a
//! UMAP-style layout. Deterministic for a fixed seed.

pub mod knn;
pub mod linalg;
pub mod rng;
pub mod umap;

pub use knn::{knn, Knn, KnnMethod, Metric};
pub use umap::{umap, Init, UmapParams};
