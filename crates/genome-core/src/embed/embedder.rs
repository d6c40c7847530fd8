//! A text embedding model: ONNX Runtime session + tokenizer + config, ready to run batches.

use ndarray::{Ix2, Ix3};
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;

use super::config::{ModelConfig, Pooling};
use super::interrupt::{self, StopCheck};
use super::pooling::{cls_pool, mean_pool};
use super::runtime::{ExecutionProvider, Runtime};
use super::tokenize::TextTokenizer;
use crate::base::l2_normalize;
use crate::{Error, Result};

/// How to build a session. Backends share the machine's cores, so the default is one
/// intra-op thread (measured: with 2 threads throughput collapses when another process is busy).
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub intra_threads: usize,
    pub provider: ExecutionProvider,
    /// Polled while a run is in flight; true stops it (see [`interrupt`]). None: runs to the end.
    pub stop: Option<StopCheck>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            intra_threads: 1,
            provider: ExecutionProvider::Cpu,
            stop: None,
        }
    }
}

pub struct TextEmbedder {
    session: Session,
    tokenizer: TextTokenizer,
    config: ModelConfig,
    settings: SessionSettings,
}

fn model_err(e: impl std::fmt::Display) -> Error {
    Error::ModelLoad(e.to_string())
}

/// An ONNX Runtime session with the given settings (text and image models alike).
pub fn build_session(runtime: &Runtime, onnx: &[u8], settings: SessionSettings) -> Result<Session> {
    let mut builder = Session::builder(&runtime.env)
        .map_err(model_err)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(model_err)?
        .with_intra_threads(settings.intra_threads.max(1))
        .map_err(model_err)?
        .with_inter_threads(1)
        .map_err(model_err)?;
    builder = register_provider(builder, settings.provider)?;
    if runtime.memory_limit.is_some() {
        builder = builder.with_env_allocators().map_err(model_err)?;
        // Constant folding computes at load, outside the capped arena: a ConstantOfShape of a
        // constant 16 GB shape would be allocated there. Folded or not, the results are the same.
        builder = builder
            .with_config_entry(
                "optimization.disable_specified_optimizers",
                "ConstantFolding",
            )
            .map_err(model_err)?;
    }
    super::guard::check_self_contained(onnx)?;
    builder.commit_from_memory(onnx).map_err(model_err)
}

impl TextEmbedder {
    pub fn new(
        runtime: &Runtime,
        onnx: &[u8],
        tokenizer_json: &[u8],
        config: ModelConfig,
        settings: SessionSettings,
    ) -> Result<Self> {
        config.validate()?;
        let tokenizer = TextTokenizer::from_json(tokenizer_json, config.max_tokens)?;
        let session = build_session(runtime, onnx, settings)?;
        let me = Self {
            session,
            tokenizer,
            config,
            settings,
        };
        me.check_signature()?;
        Ok(me)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn settings(&self) -> SessionSettings {
        self.settings
    }

    /// The graph must have the inputs and the output the config names.
    fn check_signature(&self) -> Result<()> {
        let inputs: Vec<&str> = self.session.inputs().iter().map(|o| o.name()).collect();
        for name in &self.config.input_names {
            if !inputs.contains(&name.as_str()) {
                return Err(Error::ModelMismatch(format!(
                    "config names input \"{name}\" but the model's inputs are {inputs:?}"
                )));
            }
        }
        if inputs.len() != self.config.input_names.len() {
            return Err(Error::ModelMismatch(format!(
                "the model has inputs {inputs:?}, the config names {:?}",
                self.config.input_names
            )));
        }
        let outputs: Vec<&str> = self.session.outputs().iter().map(|o| o.name()).collect();
        if !outputs.contains(&self.config.output_name.as_str()) {
            return Err(Error::ModelMismatch(format!(
                "config names output \"{}\" but the model's outputs are {outputs:?}",
                self.config.output_name
            )));
        }
        Ok(())
    }

    /// Embed a batch; one vector per text, in order. Callers chunk large inputs by the batch
    /// size and check for cancellation between chunks.
    pub fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self.tokenizer.encode_batch(texts)?;
        let names = &self.config.input_names;
        let inf = |e: ort::Error| Error::Inference(e.to_string());
        let mut inputs = vec![
            (
                names[0].clone(),
                TensorRef::from_array_view(enc.ids.view())
                    .map_err(inf)?
                    .into_dyn(),
            ),
            (
                names[1].clone(),
                TensorRef::from_array_view(enc.mask.view())
                    .map_err(inf)?
                    .into_dyn(),
            ),
        ];
        if names.len() == 3 {
            inputs.push((
                names[2].clone(),
                TensorRef::from_array_view(enc.type_ids.view())
                    .map_err(inf)?
                    .into_dyn(),
            ));
        }
        let dim = self.config.dimension;
        let pooling = self.config.pooling;
        let normalize = self.config.normalize;
        let output_name = self.config.output_name.clone();
        let mut vectors = interrupt::run(
            &mut self.session,
            inputs,
            self.settings.stop,
            |outputs| {
                let value = outputs.get(output_name.as_str()).ok_or_else(|| {
                    Error::ModelMismatch(format!("output \"{output_name}\" missing"))
                })?;
                let arr = value.try_extract_array::<f32>().map_err(|e| {
                    Error::ModelMismatch(format!(
                        "output \"{output_name}\" is not a float32 tensor: {e}"
                    ))
                })?;
                // The rank only: a shape computed by the graph could carry data, never echo it.
                let rank = arr.ndim();
                let bad_shape = |what: &str| {
                    Error::ModelMismatch(format!(
                    "output \"{output_name}\" is not {what} (it has {rank} dimensions; config: pooling {pooling:?}, dimension {dim})"
                ))
                };
                let vectors = match pooling {
                    Pooling::Mean | Pooling::Cls => {
                        let h = arr
                            .into_dimensionality::<Ix3>()
                            .map_err(|_| bad_shape("[batch, tokens, dimension]"))?;
                        if h.dim().0 != texts.len()
                            || h.dim().1 != enc.ids.dim().1
                            || h.dim().2 != dim
                        {
                            return Err(bad_shape("[batch, tokens, dimension]"));
                        }
                        if pooling == Pooling::Mean {
                            mean_pool(h, enc.mask.view())
                        } else {
                            cls_pool(h)
                        }
                    }
                    Pooling::None => {
                        let h = arr
                            .into_dimensionality::<Ix2>()
                            .map_err(|_| bad_shape("[batch, dimension] as pooling none needs"))?;
                        if h.dim() != (texts.len(), dim) {
                            return Err(bad_shape("[batch, dimension] as pooling none needs"));
                        }
                        h.outer_iter().map(|r| r.to_vec()).collect()
                    }
                };
                Ok(vectors)
            },
        )?;
        if vectors.iter().flatten().any(|x| !x.is_finite()) {
            return Err(Error::Inference(
                "model produced NaN or infinite values".into(),
            ));
        }
        if normalize {
            vectors.iter_mut().for_each(|v| l2_normalize(v));
        }
        Ok(vectors)
    }
}

fn register_provider(
    builder: ort::session::builder::SessionBuilder,
    provider: ExecutionProvider,
) -> Result<ort::session::builder::SessionBuilder> {
    match provider {
        ExecutionProvider::Cpu => Ok(builder),
        #[cfg(feature = "cuda")]
        ExecutionProvider::Cuda => builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| Error::Provider {
                provider: "cuda".into(),
                reason: format!(
                    "{e} (onnxruntime-gpu's libonnxruntime_providers_cuda.so and CUDA/cuDNN libraries must be loadable)"
                ),
            }),
        #[cfg(not(feature = "cuda"))]
        ExecutionProvider::Cuda => Err(Error::Provider {
            provider: "cuda".into(),
            reason: "pg_genome was built without the `cuda` cargo feature".into(),
        }),
    }
}
