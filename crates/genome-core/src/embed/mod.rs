//! Text embeddings: registry config, tokenization, ONNX Runtime sessions and pooling.

pub mod config;
pub mod embedder;
pub mod guard;
pub mod interrupt;
pub mod pooling;
pub mod runtime;
pub mod tokenize;
pub mod weights;

pub use config::{ModelConfig, Pooling};
pub use embedder::{SessionSettings, TextEmbedder};
pub use runtime::{ExecutionProvider, Runtime};
