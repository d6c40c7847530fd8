//! pg_genome's core: model code and algorithms that do not need PostgreSQL.
//!
//! The pgrx extension (the workspace root) is a thin layer over this crate: it reads
//! arguments and GUCs, fetches model rows with SPI and maps [`Error`] to PostgreSQL ERRORs.
//! Everything here is tested with plain `cargo test`.
//!
//! Modules import downwards only: [`base`] (points, vector maths, `Cancelled`) at the bottom,
//! then [`reduce`], then [`cluster`], then [`families`] and [`pets`] (the plans the jobs write);
//! the models ([`embed`], [`image`]) take only normalisation from `base`; [`seq`] (DNA reads
//! cleaned, k-mer featurisers) imports only `base`.
//!
//! No unsafe code, but where C is called or raw pointers are required: ONNX Runtime's allocator
//! API and its library loader (`embed::runtime`), the model-run watchdog's signal mask
//! (`embed::interrupt`) and the distance matrix's GEMM (`cluster::hdbscan`), which allow it for
//! that reason.
#![deny(unsafe_code)]

pub mod base;
pub mod bundle;
pub mod cluster;
pub mod embed;
pub mod error;
pub mod families;
pub mod image;
pub mod pets;
pub mod rank;
pub mod reduce;
pub mod seq;

pub use error::{Error, Result};
