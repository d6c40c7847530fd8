//! Clustering: HDBSCAN over embedding vectors (exact in `hdbscan`, over a kNN graph in `approx`),
//! the full-classification pipeline (`pipeline`: reduction, then HDBSCAN) and the building
//! blocks of families (`families`). Built on `base` and `reduce`; [`Points`], [`Cancelled`] and
//! [`euclidean`] are `base`'s, re-exported here under the paths they always had.

pub mod approx;
pub mod boruvka;
pub mod families;
pub mod hdbscan;
pub mod pipeline;
pub mod quality;

pub use crate::base::{euclidean, Cancelled, Points};
pub use hdbscan::{hdbscan, Hdbscan, HdbscanParams};
pub use pipeline::{classify, Classified, ClassifyParams, Method, Reduction};
