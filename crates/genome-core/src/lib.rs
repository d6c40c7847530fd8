//! pg_genome's core: model code and algorithms that do not need PostgreSQL.
//!
//! The pgrx extension (the workspace root) is a thin layer over this crate: it reads
//! arguments and GUCs, fetches model rows with SPI and maps [`Error`] to PostgreSQL ERRORs.
//! Everything here is tested with plain `cargo test`.

pub mod cluster;
pub mod embed;
pub mod error;
pub mod image;
pub mod pets;
pub mod reduce;

pub use error::{Error, Result};
