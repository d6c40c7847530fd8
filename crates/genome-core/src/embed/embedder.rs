//! A text embedding model: ONNX Runtime session + tokenizer + config, ready to run batches.

use ndarray::{Ix2, Ix3};
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights, SessionBuilder};
use ort::session::Session;
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
    /// Text models on the CPU: when above 1, the runs of a batch of several texts are spread
    /// over this many single-threaded sessions, run at once on as many threads, that share
    /// the main session's weights ([`super::weights`]); a lone text runs in the main session
    /// on `intra_threads` threads. An inference worker's setting (one per core): measured on
    /// 2 cores, two single-threaded sessions embed 440 texts/s where one 2-thread session
    /// embeds 383 to 412.
    pub parallel_sessions: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            intra_threads: 1,
            provider: ExecutionProvider::Cpu,
            stop: None,
            parallel_sessions: 1,
        }
    }
}

pub struct TextEmbedder {
    /// The main session on `intra_threads` threads.
    session: Session,
    /// Single-threaded sessions sharing the main session's weights (none unless
    /// `parallel_sessions` > 1 on the CPU).
    parallel: Vec<Session>,
    tokenizer: TextTokenizer,
    config: ModelConfig,
    settings: SessionSettings,
}

fn model_err(e: impl std::fmt::Display) -> Error {
    Error::ModelLoad(e.to_string())
}

/// An ONNX Runtime session with the given settings (text and image models alike).
pub fn build_session(runtime: &Runtime, onnx: &[u8], settings: SessionSettings) -> Result<Session> {
    super::guard::check_self_contained(onnx)?;
    builder(runtime, settings)?
        .commit_from_memory(onnx)
        .map_err(model_err)
}

/// The main session and `parallel_sessions` single-threaded ones, all given one copy of the
/// graph's large initializers and one container of packed weights ([`super::weights`]).
fn build_sessions(
    runtime: &Runtime,
    onnx: &[u8],
    settings: SessionSettings,
) -> Result<(Session, Vec<Session>)> {
    let n = match settings.provider {
        ExecutionProvider::Cpu => settings.parallel_sessions,
        _ => 1,
    };
    if n <= 1 {
        return Ok((build_session(runtime, onnx, settings)?, Vec::new()));
    }
    super::guard::check_self_contained(onnx)?;
    let shared: Vec<(String, std::sync::Arc<ort::value::DynValue>)> =
        super::weights::shared_initializers(onnx)?
            .into_iter()
            .map(|(name, v)| (name, std::sync::Arc::new(v)))
            .collect();
    let packed = PrepackedWeights::new();
    let build = |threads: usize| -> Result<Session> {
        let mut b = builder(
            runtime,
            SessionSettings {
                intra_threads: threads,
                ..settings
            },
        )?
        .with_prepacked_weights(&packed)
        .map_err(model_err)?;
        for (name, value) in &shared {
            b = b
                .with_initializer(name, std::sync::Arc::clone(value))
                .map_err(model_err)?;
        }
        b.commit_from_memory(onnx).map_err(model_err)
    };
    let main = build(settings.intra_threads)?;
    let parallel = (0..n).map(|_| build(1)).collect::<Result<Vec<_>>>()?;
    Ok((main, parallel))
}

fn builder(runtime: &Runtime, settings: SessionSettings) -> Result<SessionBuilder> {
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
    Ok(builder)
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
        let (session, parallel) = build_sessions(runtime, onnx, settings)?;
        let me = Self {
            session,
            parallel,
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
    ///
    /// The texts run in groups of similar token length ([`length_groups`]): a model run pads
    /// every text to the longest of its run, and on a CPU the padding costs as much as real
    /// tokens (600 sample texts in runs of 32 in their given order: 53% more tokens than alone,
    /// and as much more time; sorted by characters still 51%).
    pub fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.len() <= 1 {
            return self.embed_run(texts);
        }
        let lens = self.tokenizer.lengths(texts)?;
        let groups = length_groups(&lens, MAX_PADDING, MAX_RUN_TOKENS);
        if !self.parallel.is_empty() {
            return self.embed_parallel(texts, &lens, groups);
        }
        if groups.len() == 1 {
            return self.embed_run(texts);
        }
        let mut out = vec![Vec::new(); texts.len()];
        for g in groups {
            let sub: Vec<&str> = g.iter().map(|&i| texts[i]).collect();
            for (i, v) in g.into_iter().zip(self.embed_run(&sub)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// One model run over `texts` in the main session, padded to the longest.
    fn embed_run(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        run_texts(
            &mut self.session,
            &self.tokenizer,
            &self.config,
            self.settings.stop,
            texts,
            0,
        )
    }

    /// The runs of a batch spread over the parallel sessions: each run of [`length_groups`]
    /// is dealt into up to one part per session (every other text, so the parts are alike),
    /// each part padded to the run's longest text, which gives every text the inputs, hence
    /// the vector, that the whole run gives it; the parts go, largest first, to the session
    /// with the least work so far, and the sessions run theirs at once, one thread each.
    fn embed_parallel(
        &mut self,
        texts: &[&str],
        lens: &[usize],
        groups: Vec<Vec<usize>>,
    ) -> Result<Vec<Vec<f32>>> {
        let k = self.parallel.len();
        let mut parts: Vec<(Vec<usize>, usize)> = Vec::new();
        for g in groups {
            let longest = g.iter().map(|&i| lens[i]).max().unwrap_or(0);
            let n = k.min(g.len());
            for j in 0..n {
                parts.push((g.iter().skip(j).step_by(n).copied().collect(), longest));
            }
        }
        let cost = |p: &(Vec<usize>, usize)| p.0.len() * p.1.max(1);
        parts.sort_by_key(|p| std::cmp::Reverse(cost(p)));
        let mut plans: Vec<Vec<(Vec<usize>, usize)>> = vec![Vec::new(); k];
        let mut load = vec![0usize; k];
        for p in parts {
            let s = (0..k).min_by_key(|&s| (load[s], s)).expect("k > 0");
            load[s] += cost(&p);
            plans[s].push(p);
        }
        let (tok, config, stop) = (&self.tokenizer, &self.config, self.settings.stop);
        // At most MAX_RUN_TOKENS padded tokens in flight across the sessions (a part waits for
        // the others' to finish; one runs whatever its size when none is in flight), so the
        // batch peaks no higher than one run of the main session would. A failed part stops
        // the other sessions before their next part.
        let budget = TokenBudget::new(MAX_RUN_TOKENS);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let (budget, failed) = (&budget, &failed);
        let run_plan = move |session: &mut Session, plan: Vec<(Vec<usize>, usize)>| {
            let mut out = Vec::new();
            for (idx, longest) in plan {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(Error::Interrupted);
                }
                let sub: Vec<&str> = idx.iter().map(|&i| texts[i]).collect();
                let _held = budget.take(idx.len() * longest.max(1));
                let vectors = run_texts(session, tok, config, stop, &sub, longest);
                let vectors = vectors.inspect_err(|_| {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                })?;
                out.extend(idx.into_iter().zip(vectors));
            }
            Ok::<_, Error>(out)
        };
        // only as many sessions as there is work for
        plans.retain(|p| !p.is_empty());
        let results: Vec<Result<Vec<(usize, Vec<f32>)>>> = std::thread::scope(|scope| {
            let mut work = self.parallel.iter_mut().zip(plans);
            let (first, first_plan) = work.next().expect("a plan");
            let handles: Vec<_> = work
                .map(|(session, plan)| {
                    interrupt::without_signals(|| {
                        std::thread::Builder::new()
                            .name("genome-run".into())
                            .spawn_scoped(scope, move || run_plan(session, plan))
                    })
                })
                .collect();
            let mut out = vec![run_plan(first, first_plan)];
            for h in handles {
                out.push(match h {
                    Ok(h) => h.join().unwrap_or_else(|_| {
                        Err(Error::Inference("a model run thread panicked".into()))
                    }),
                    Err(e) => Err(Error::Inference(format!(
                        "could not start a model run thread: {e}"
                    ))),
                });
            }
            out
        });
        // the first real failure (a part skipped after another failed reports Interrupted)
        let mut out = vec![Vec::new(); texts.len()];
        let mut interrupted = false;
        for r in results {
            match r {
                Ok(v) => {
                    for (i, v) in v {
                        out[i] = v;
                    }
                }
                Err(Error::Interrupted) => interrupted = true,
                Err(e) => return Err(e),
            }
        }
        if interrupted {
            return Err(Error::Interrupted);
        }
        Ok(out)
    }
}

/// Padded tokens in flight across parallel sessions, at most `max` unless nothing else runs.
struct TokenBudget {
    used: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
    max: usize,
}

/// Tokens held by a running part, given back when it ends (errors and panics included).
struct Held<'a>(&'a TokenBudget, usize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut u = self.0.used.lock().unwrap_or_else(|p| p.into_inner());
        *u -= self.1;
        self.0.freed.notify_all();
    }
}

impl TokenBudget {
    fn new(max: usize) -> Self {
        TokenBudget {
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            max,
        }
    }

    fn take(&self, tokens: usize) -> Held<'_> {
        let mut u = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *u > 0 && *u + tokens > self.max {
            u = self.freed.wait(u).unwrap_or_else(|p| p.into_inner());
        }
        *u += tokens;
        Held(self, tokens)
    }
}

/// One model run over `texts`, padded to the longest of them and at least to `pad_to` tokens.
fn run_texts(
    session: &mut Session,
    tokenizer: &TextTokenizer,
    config: &ModelConfig,
    stop: Option<StopCheck>,
    texts: &[&str],
    pad_to: usize,
) -> Result<Vec<Vec<f32>>> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let enc = tokenizer.encode_batch_to(texts, pad_to)?;
    let names = &config.input_names;
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
    let dim = config.dimension;
    let pooling = config.pooling;
    let normalize = config.normalize;
    let output_name = config.output_name.clone();
    let mut vectors = interrupt::run(session, inputs, stop, |outputs| {
        let value = outputs
            .get(output_name.as_str())
            .ok_or_else(|| Error::ModelMismatch(format!("output \"{output_name}\" missing")))?;
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
                if h.dim().0 != texts.len() || h.dim().1 != enc.ids.dim().1 || h.dim().2 != dim {
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
    })?;
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

/// The share of padding a run may add to its real tokens before the texts are split into runs
/// of similar length.
pub const MAX_PADDING: f64 = 0.10;

/// The most padded tokens (texts x longest) one model run holds: 32 texts of 256 tokens. A
/// run's activations grow with it (attention with texts x length squared), so a large batch of
/// long texts runs in several runs and peaks no higher than a batch of 32, while short texts
/// still run in large batches (the inference workers' batches across backends).
pub const MAX_RUN_TOKENS: usize = 32 * 256;

/// Split texts of token lengths `lens` into runs (indices, shortest first) whose padded size
/// (count x longest) exceeds their real tokens by at most `max_padding` and holds at most
/// `max_tokens` (a text longer than that runs alone): sorted by length, a run grows while it
/// stays within both bounds.
pub fn length_groups(lens: &[usize], max_padding: f64, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (lens[i], i));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut real = 0usize;
    for i in order {
        let l = lens[i].max(1);
        let fits = groups.last().is_some_and(|g| {
            let padded = l * (g.len() + 1);
            padded <= max_tokens && padded as f64 <= (real + l) as f64 * (1.0 + max_padding)
        });
        if fits {
            groups.last_mut().expect("a group").push(i);
            real += l;
        } else {
            groups.push(vec![i]);
            real = l;
        }
    }
    groups
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

#[cfg(test)]
mod tests {
    use super::length_groups;

    /// Every text in exactly one run; every run within the padding bound; runs in length order.
    fn check(lens: &[usize], max_padding: f64) -> Vec<Vec<usize>> {
        check_tokens(lens, max_padding, usize::MAX)
    }

    fn check_tokens(lens: &[usize], max_padding: f64, max_tokens: usize) -> Vec<Vec<usize>> {
        let groups = length_groups(lens, max_padding, max_tokens);
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
        let mut last = 0;
        for g in &groups {
            let longest = g.iter().map(|&i| lens[i].max(1)).max().unwrap();
            let real: usize = g.iter().map(|&i| lens[i].max(1)).sum();
            assert!(
                (longest * g.len()) as f64 <= real as f64 * (1.0 + max_padding) + 1e-9,
                "{g:?}"
            );
            assert!(g.len() == 1 || longest * g.len() <= max_tokens, "{g:?}");
            let shortest = g.iter().map(|&i| lens[i]).min().unwrap();
            assert!(shortest >= last);
            last = longest;
        }
        groups
    }

    #[test]
    fn texts_of_one_length_run_together_and_different_lengths_apart() {
        assert_eq!(check(&[7, 7, 7, 7], 0.1), vec![vec![0, 1, 2, 3]]);
        // 10 and 40 tokens: padding the 10 to 40 would triple its cost
        assert_eq!(check(&[40, 10, 40, 10], 0.1), vec![vec![1, 3], vec![0, 2]]);
        assert!(check(&[], 0.1).is_empty());
    }

    #[test]
    fn a_run_holds_at_most_max_tokens() {
        // 128 texts of 256 tokens: four runs of 32, not one run four times as large
        let groups = check_tokens(&[256; 128], 0.1, super::MAX_RUN_TOKENS);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![32; 4]);
        // 128 short texts stay one run; a text longer than the budget runs alone
        assert_eq!(
            check_tokens(&[20; 128], 0.1, super::MAX_RUN_TOKENS).len(),
            1
        );
        assert_eq!(check_tokens(&[300, 300], 0.1, 299), vec![vec![0], vec![1]]);
    }

    #[test]
    fn random_lengths_stay_within_the_padding_bound() {
        let mut x = 12345u64;
        let lens: Vec<usize> = (0..600)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                3 + (x >> 33) as usize % 250
            })
            .collect();
        for p in [0.0, 0.1, 0.5] {
            let g = check(&lens, p);
            let padded: usize = g
                .iter()
                .map(|g| g.len() * g.iter().map(|&i| lens[i]).max().unwrap())
                .sum();
            let real: usize = lens.iter().sum();
            assert!(padded as f64 <= real as f64 * (1.0 + p) + 1e-9);
        }
    }
}
