use thiserror::Error;

/// Every failure the core can report. The pgrx layer turns each into an ERROR with a SQLSTATE.
#[derive(Debug, Error)]
pub enum Error {
    #[error("ONNX Runtime library could not be loaded from \"{path}\": {reason}")]
    RuntimeLoad { path: String, reason: String },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("invalid tokenizer: {0}")]
    Tokenizer(String),
    #[error("ONNX model could not be loaded: {0}")]
    ModelLoad(String),
    #[error("model does not match its config: {0}")]
    ModelMismatch(String),
    #[error("execution provider \"{provider}\" is not available: {reason}")]
    Provider { provider: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    /// The host asked for the run to stop (cancel, timeout, termination) while it was in flight.
    #[error("model run interrupted")]
    Interrupted,
    /// Bytes that are not a readable JPEG, PNG or WebP image.
    #[error("invalid image: {0}")]
    Image(String),
    /// An image over the configured size limits (checked before its pixels are allocated).
    #[error("image too large: {0}")]
    ImageLimit(String),
}

pub type Result<T> = std::result::Result<T, Error>;
