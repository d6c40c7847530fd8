//! Images: decoding with size limits, the model's preprocessing (resize, centre crop, mean/std),
//! the image embedding session and photo quality measures.
//!
//! Preprocessing reproduces Pillow's bilinear resize exactly (same coefficients, same 8-bit fixed
//! point, horizontal pass first), so features match a PyTorch/Pillow reference pipeline run on
//! the same images, not just approximately.

pub mod config;
pub mod decode;
pub mod embedder;
pub mod jpeg_scan;
pub mod quality;
pub mod resize;

pub use config::{ChannelOrder, ImageConfig};
pub use decode::{decode, DecodeLimits};
pub use embedder::{preprocess, ImageEmbedder};
pub use quality::{quality, Quality};
