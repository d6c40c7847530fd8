//! Dimension reduction for clustering: k-nearest-neighbour graphs (exact, HNSW or NN-descent) and a
//! UMAP-style layout. Deterministic for a fixed seed.

pub mod knn;
pub mod linalg;
pub mod nndescent;
pub mod rng;
pub mod umap;

pub use knn::{knn, Knn, KnnMethod, Metric};
pub use nndescent::{nn_descent, NnDescentParams};
pub use umap::{umap, Init, UmapParams};
