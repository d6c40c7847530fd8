//! The ranker as data: a catalog's features ([`Catalog`]), the memory of past successful intents
//! ([`Memory`]), candidates and features for one intent ([`candidates`], [`features`]), the
//! training loop ([`train`]) and the trained model ([`Ranker`]).
//!
//! Serving and training share [`features`]: PostgreSQL finds the dense (HNSW) and lexical
//! (full-text) candidates when serving, [`candidates`] finds them exactly when training; both
//! add the memory's candidates and score them with the same feature vector.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::base::{dot, l2_normalize, Cancelled, QuantRows};
use crate::reduce::rng::Rng;

use super::adapter::{train_adapter, Adapter, AdapterConfig, Prototypes};
use super::metrics::{self, RankingMetrics};
use super::replay::{td_lambda_targets, PrioritizedReplay};
use super::scorer::{cosine_lr, listwise_loss, Adam, Candidate, Scorer, ScorerConfig};
use super::text::Bm25;

/// The scorer's per-candidate features, in order (their names are stored with each model).
pub const FEATURES: [&str; 22] = [
    "dense_cosine",
    "bm25",
    "memory_max_cosine",
    "memory_top3_cosine",
    "memory_count",
    "dense_rr",
    "bm25_rr",
    "memory_rr",
    "tool_count",
    "pagerank",
    "clustering",
    "usage_30d",
    "success_rate",
    "context_overlap",
    "adapter_cosine",
    "adapter_rr",
    "memory_kernel",
    "memory_bm25",
    "memory_bm25_rr",
    "memory_bm25_rel",
    "dense_rel",
    "memory_kernel_rel",
];
/// Temperature of the memory's kernel density feature, log sum exp((cosine - 1) / tau).
const KERNEL_TAU: f32 = 0.1;
/// Number of per-candidate features.
pub const N_FEATURES: usize = FEATURES.len();

/// Per capability statistics from the graph and the outcome log.
#[derive(Debug, Clone, Default)]
pub struct CapabilityStats {
    pub tool_count: f32,
    /// PageRank times the number of nodes (1 = average).
    pub pagerank: f32,
    pub clustering: f32,
    pub usage_30d: f32,
    /// Successes / outcomes over 30 days, smoothed: (s + 1) / (n + 2).
    pub success_rate: f32,
}

/// A catalog's features as the ranker reads them.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub names: Vec<String>,
    pub text_dim: usize,
    /// n x text_dim unit text embeddings.
    pub text: Vec<f32>,
    pub graph_dim: usize,
    /// n x graph_dim Node2Vec embeddings of the capabilities (zero rows when isolated).
    pub graph: Vec<f32>,
    /// Node2Vec embeddings of the tools, n_tools x graph_dim.
    pub tool_graph: Vec<f32>,
    /// Tools of each capability (indices into tool_graph).
    pub cap_tools: Vec<Vec<u32>>,
    pub stats: Vec<CapabilityStats>,
    pub bm25: Bm25,
}

impl Catalog {
    /// Number of capabilities.
    pub fn len(&self) -> usize {
        self.names.len()
    }
    /// Whether the catalog has no capability.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    /// Row `i` of the text embeddings.
    pub fn text_row(&self, i: usize) -> &[f32] {
        &self.text[i * self.text_dim..(i + 1) * self.text_dim]
    }
    /// The hybrid embedding of capability `i`: sqrt(w) * text ++ sqrt(1 - w) * graph (both unit),
    /// L2-normalised; text only when the capability has no graph embedding.
    pub fn hybrid(&self, i: usize, text_weight: f32) -> Vec<f32> {
        hybrid(
            self.text_row(i),
            &self.graph[i * self.graph_dim..(i + 1) * self.graph_dim],
            text_weight,
        )
    }
    /// The `k` capabilities with the best BM25 scores for a text (lexical candidates).
    pub fn lexical(&self, text: &str, k: usize) -> Vec<u32> {
        top_positive(&self.bm25.dense_scores_without(text, None), k)
    }
    /// The tool embeddings of capability `i`, row after row.
    pub fn tool_rows(&self, i: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.cap_tools[i].len() * self.graph_dim);
        for t in &self.cap_tools[i] {
            let t = *t as usize;
            out.extend_from_slice(&self.tool_graph[t * self.graph_dim..(t + 1) * self.graph_dim]);
        }
        out
    }
}

/// The normalised weighted combination of a text and a graph embedding (see [`Catalog::hybrid`]).
pub fn hybrid(text: &[f32], graph: &[f32], text_weight: f32) -> Vec<f32> {
    let w = text_weight.clamp(0.0, 1.0);
    let mut t = text.to_vec();
    l2_normalize(&mut t);
    let mut g = graph.to_vec();
    l2_normalize(&mut g);
    let has_graph = g.iter().any(|x| *x != 0.0);
    let (a, b) = if has_graph {
        (w.sqrt(), (1.0 - w).sqrt())
    } else {
        (1.0, 0.0)
    };
    let mut out: Vec<f32> = t
        .iter()
        .map(|x| x * a)
        .chain(g.iter().map(|x| x * b))
        .collect();
    l2_normalize(&mut out);
    out
}

/// Past successful intents: their embeddings and the capability each chose; with the ranker's
/// intent adapter and the capabilities' prototypes (text plus remembered intents).
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub dim: usize,
    pub emb: Vec<f32>,
    pub cap: Vec<u32>,
    /// The remembered intents' texts (empty when not known: memories of 0.7.0 rankers).
    pub text: Vec<String>,
    pub protos: Prototypes,
    pub adapter: Option<Adapter>,
    /// BM25 over the capabilities' texts each expanded with its remembered intents' texts.
    pub lexical: Bm25,
    /// `emb` and the unit prototypes as bytes, for the per-query scans over all of them.
    quant: QuantRows,
    proto_quant: QuantRows,
}

/// Per capability, what the memory says about a query: the best three cosines (descending),
/// the number of remembered intents and the kernel sum of exp((cosine - 1) / tau).
#[derive(Debug, Clone, Copy)]
pub struct MemoryHit {
    pub best: [f32; 3],
    pub count: u32,
    pub kernel: f32,
}

impl MemoryHit {
    /// Nothing remembered.
    pub const NONE: MemoryHit = MemoryHit {
        best: [0.0; 3],
        count: 0,
        kernel: 0.0,
    };
}

/// One query's view of the memory, computed once (the serving path reads it for candidates and
/// features), each indexed by capability: memory hits, the adapted query's cosine with every
/// prototype (with an adapter) and the expanded BM25 scores.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    hits: Vec<MemoryHit>,
    adapted: Option<Vec<f32>>,
    lexical: Vec<f64>,
}

impl Signals {
    fn hit(&self, c: u32) -> MemoryHit {
        self.hits
            .get(c as usize)
            .copied()
            .unwrap_or(MemoryHit::NONE)
    }
}

impl Memory {
    /// Nothing remembered yet, for intents of dimension `dim`.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            quant: QuantRows::new(dim),
            ..Default::default()
        }
    }
    /// Number of remembered intents.
    pub fn len(&self) -> usize {
        self.cap.len()
    }
    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.cap.is_empty()
    }
    /// What the memory says about a query, computed once for its candidates and features;
    /// memory row `exclude` (the query itself in training) is left out everywhere.
    pub fn signals(&self, q: &Query, exclude: Option<usize>) -> Signals {
        Signals {
            hits: self.hits(q.emb, exclude),
            adapted: self
                .adapt(q.emb)
                .map(|aq| self.adapter_cosines(&aq, exclude)),
            lexical: self.lexical_scores(q.text, exclude),
        }
    }

    /// Per capability (indexed by capability; `count` 0 where nothing is remembered): the best
    /// three cosines of the query with its remembered intents (descending), their count and
    /// kernel sum, skipping memory row `exclude`.
    fn hits(&self, q: &[f32], exclude: Option<usize>) -> Vec<MemoryHit> {
        if self.dim == 0 || self.cap.is_empty() {
            return vec![];
        }
        let n = self.cap.iter().max().map_or(0, |m| *m as usize + 1);
        let mut out = vec![MemoryHit::NONE; n];
        let qq = QuantRows::quantize(q);
        for i in 0..self.quant.len() {
            if Some(i) == exclude {
                continue;
            }
            let s = self.quant.dot(i, &qq);
            let e = &mut out[self.cap[i] as usize];
            if e.count == 0 {
                e.best = [-1.0; 3];
            }
            e.count += 1;
            e.kernel += ((s - 1.0) / KERNEL_TAU).exp();
            let b = &mut e.best;
            if s > b[2] {
                b[2] = s;
                if b[2] > b[1] {
                    b.swap(1, 2);
                }
                if b[1] > b[0] {
                    b.swap(0, 1);
                }
            }
        }
        out
    }

    /// Remember one intent: its unit embedding, its capability and its text.
    pub fn push(&mut self, emb: &[f32], cap: u32, text: &str) {
        self.quant.push(emb);
        self.emb.extend_from_slice(emb);
        self.cap.push(cap);
        self.text.push(text.to_owned());
    }

    /// Set the prototypes (from the catalog's unit text embeddings and the remembered intents),
    /// the expanded lexical index and the adapter.
    pub fn with_model(mut self, cat: &Catalog, adapter: Option<Adapter>) -> Self {
        self.protos = Prototypes::new(self.dim, &cat.text, &self.emb, &self.cap);
        self.proto_quant = QuantRows::from_rows(self.dim, &self.protos.unit);
        self.lexical = cat.bm25.expanded(
            self.cap
                .iter()
                .zip(&self.text)
                .map(|(c, t)| (*c, t.as_str())),
        );
        self.adapter = adapter;
        self
    }

    /// BM25 scores over the expanded capability texts, per capability (none without an
    /// expanded index), leaving memory row `exclude` (the query itself in training) out of its
    /// capability's text.
    pub fn lexical_scores(&self, text: &str, exclude: Option<usize>) -> Vec<f64> {
        if self.lexical.is_empty() {
            return vec![];
        }
        let own = exclude.and_then(|i| Some((*self.cap.get(i)?, self.text.get(i)?.as_str())));
        self.lexical.dense_scores_without(text, own)
    }

    /// The adapted query, when there is an adapter.
    pub fn adapt(&self, q: &[f32]) -> Option<Vec<f32>> {
        self.adapter
            .as_ref()
            .filter(|a| a.dim == q.len() && !self.protos.unit.is_empty())
            .map(|a| a.apply(q))
    }

    /// Cosine of the adapted query with every capability's prototype (its own intent, memory
    /// row `exclude`, left out of its capability's prototype).
    fn adapter_cosines(&self, aq: &[f32], exclude: Option<usize>) -> Vec<f32> {
        let d = self.dim;
        let qq = QuantRows::quantize(aq);
        let mut out: Vec<f32> = (0..self.proto_quant.len())
            .map(|c| self.proto_quant.dot(c, &qq))
            .collect();
        if let Some(i) = exclude {
            let c = self.cap[i] as usize;
            out[c] = self
                .protos
                .cosine(aq, c, Some(&self.emb[i * d..(i + 1) * d]));
        }
        out
    }
}

/// An intent to rank: its unit embedding, its text (for BM25) and the context tools in use.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub emb: &'a [f32],
    pub text: &'a str,
    pub context: &'a [u32],
}

/// How many candidates each source contributes.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct CandidateCounts {
    pub dense: usize,
    pub lexical: usize,
    pub memory: usize,
    #[serde(default)]
    pub adapter: usize,
    /// Best BM25 over the capability texts expanded with the remembered intents.
    #[serde(default)]
    pub memory_lexical: usize,
}

impl Default for CandidateCounts {
    fn default() -> Self {
        Self {
            dense: 60,
            lexical: 30,
            memory: 60,
            adapter: 60,
            memory_lexical: 45,
        }
    }
}

/// The indices of the `k` best positive scores, best first (ties: lower index first).
fn top_positive(scores: &[f64], k: usize) -> Vec<u32> {
    top_by(
        scores
            .iter()
            .enumerate()
            .filter(|(_, x)| **x > 0.0)
            .map(|(i, x)| (i as u32, *x as f32))
            .collect(),
        k,
    )
}

/// The `k` best by score, best first; ties in the order given (a total order, so that training
/// and serving see the same candidates).
fn top_by<T: Copy>(v: Vec<(T, f32)>, k: usize) -> Vec<T> {
    let mut v: Vec<(usize, T, f32)> = v
        .into_iter()
        .enumerate()
        .map(|(i, (t, s))| (i, t, s))
        .collect();
    let cmp = |a: &(usize, T, f32), b: &(usize, T, f32)| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0));
    if k == 0 {
        return vec![];
    }
    if v.len() > k {
        v.select_nth_unstable_by(k - 1, cmp);
        v.truncate(k);
    }
    v.sort_by(cmp);
    v.into_iter().map(|x| x.1).collect()
}

/// Exact candidates for a query (training and evaluation without PostgreSQL): the top dense
/// cosines, the top BM25 scores, the capabilities of the best remembered intents; union, in
/// that order.
pub fn candidates(cat: &Catalog, sig: &Signals, q: &Query, counts: CandidateCounts) -> Vec<u32> {
    let dense: Vec<(u32, f32)> = (0..cat.len())
        .map(|i| (i as u32, dot(q.emb, cat.text_row(i))))
        .collect();
    memory_candidates_then(
        top_by(dense, counts.dense),
        cat.lexical(q.text, counts.lexical),
        sig,
        counts,
    )
}

/// The union of dense and lexical candidates (found by the caller), the capabilities of the
/// best remembered intents and the best prototypes under the adapter.
pub fn memory_candidates_then(
    dense: Vec<u32>,
    lexical: Vec<u32>,
    sig: &Signals,
    counts: CandidateCounts,
) -> Vec<u32> {
    let by_mem = top_by(
        sig.hits
            .iter()
            .enumerate()
            .filter(|(_, h)| h.count > 0)
            .map(|(c, h)| (c as u32, h.best[0]))
            .collect(),
        counts.memory,
    );
    let by_adapter = match &sig.adapted {
        Some(s) if counts.adapter > 0 => top_by(
            s.iter().enumerate().map(|(c, x)| (c as u32, *x)).collect(),
            counts.adapter,
        ),
        _ => vec![],
    };
    let by_lexical = top_positive(&sig.lexical, counts.memory_lexical);
    let mut seen = HashSet::new();
    dense
        .into_iter()
        .chain(lexical)
        .chain(by_mem)
        .chain(by_adapter)
        .chain(by_lexical)
        .filter(|c| seen.insert(*c))
        .collect()
}

fn reciprocal_ranks(scores: &[f32]) -> Vec<f32> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let mut rr = vec![0f32; scores.len()];
    for (r, i) in order.into_iter().enumerate() {
        if scores[i] > 0.0 {
            rr[i] = 1.0 / (r as f32 + 1.0);
        }
    }
    rr
}

/// The feature matrix (candidates x [`N_FEATURES`], row-major) of a query's candidates.
pub fn features(cat: &Catalog, sig: &Signals, q: &Query, cands: &[u32]) -> Vec<f32> {
    let dense: Vec<f32> = cands
        .iter()
        .map(|c| dot(q.emb, cat.text_row(*c as usize)))
        .collect();
    let bm25: Vec<f32> = cat
        .bm25
        .score_docs(q.text, cands)
        .into_iter()
        .map(|x| x as f32)
        .collect();
    let memory: Vec<MemoryHit> = cands.iter().map(|c| sig.hit(*c)).collect();
    let mem_max: Vec<f32> = memory
        .iter()
        .map(|h| if h.count > 0 { h.best[0].max(0.0) } else { 0.0 })
        .collect();
    let adapted: Vec<f32> = match &sig.adapted {
        Some(a) => cands.iter().map(|c| a[*c as usize]).collect(),
        None => vec![0.0; cands.len()],
    };
    // best first: its first score is the query's best over the whole catalog
    let lex_best = sig.lexical.iter().copied().fold(0.0, f64::max) as f32;
    let mem_bm25: Vec<f32> = cands
        .iter()
        .map(|c| sig.lexical.get(*c as usize).copied().unwrap_or(0.0) as f32)
        .collect();
    // the text embedding counts as one remembered intent, so that the feature exists for
    // capabilities without memory: log(sum exp((cos - 1) / tau))
    let kernel: Vec<f32> = (0..cands.len())
        .map(|j| (memory[j].kernel + ((dense[j] - 1.0) / KERNEL_TAU).exp()).ln())
        .collect();
    let best_of = |v: &[f32]| v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (dense_best, kernel_best) = (best_of(&dense), best_of(&kernel));
    let rr_mb = reciprocal_ranks(&mem_bm25);
    let (rr_d, rr_l, rr_m, rr_a) = (
        reciprocal_ranks(&dense.iter().map(|x| x + 1.0).collect::<Vec<_>>()),
        reciprocal_ranks(&bm25),
        reciprocal_ranks(&mem_max),
        reciprocal_ranks(&adapted.iter().map(|x| x + 1.0).collect::<Vec<_>>()),
    );
    let context: HashSet<u32> = q.context.iter().copied().collect();
    let mut out = Vec::with_capacity(cands.len() * N_FEATURES);
    for (j, c) in cands.iter().enumerate() {
        let c = *c as usize;
        let (b, n) = (memory[j].best, memory[j].count);
        let top3 = if n == 0 {
            0.0
        } else {
            let k = (n as usize).min(3);
            b[..k].iter().map(|x| x.max(0.0)).sum::<f32>() / k as f32
        };
        let s = &cat.stats[c];
        let overlap = if context.is_empty() {
            0.0
        } else {
            cat.cap_tools[c]
                .iter()
                .filter(|t| context.contains(t))
                .count() as f32
                / context.len() as f32
        };
        let row = [
            dense[j],
            (1.0 + bm25[j]).ln(),
            mem_max[j],
            top3,
            (1.0 + n as f32).ln(),
            rr_d[j],
            rr_l[j],
            rr_m[j],
            (1.0 + s.tool_count).ln(),
            (1.0 + s.pagerank).ln(),
            s.clustering,
            (1.0 + s.usage_30d).ln(),
            s.success_rate,
            overlap,
            adapted[j],
            if sig.adapted.is_some() { rr_a[j] } else { 0.0 },
            kernel[j],
            (1.0 + mem_bm25[j]).ln(),
            rr_mb[j],
            // relative to the query's best: scores whose scale varies with the query
            if lex_best > 0.0 {
                mem_bm25[j] / lex_best
            } else {
                0.0
            },
            dense[j] - dense_best,
            kernel[j] - kernel_best,
        ];
        // NaN in a stored feature must not poison the score: it reads as 0
        out.extend(row.iter().map(|x| if x.is_finite() { *x } else { 0.0 }));
    }
    out
}

/// One experience of the log: the state (intent, context), the action (the chosen
/// capability) and the reward; `session`/`step` order a multi-step session.
#[derive(Debug, Clone)]
pub struct Experience {
    pub emb: Vec<f32>,
    pub text: String,
    pub context: Vec<u32>,
    pub chosen: u32,
    pub reward: f32,
    pub session: Option<String>,
    pub step: i32,
}

/// A labelled intent for early stopping and evaluation.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub emb: Vec<f32>,
    pub text: String,
    pub context: Vec<u32>,
    pub label: u32,
}

/// Training settings (stored with the model).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub patience: usize,
    pub batch: usize,
    pub learning_rate: f32,
    pub min_learning_rate: f32,
    pub weight_decay: f32,
    pub gamma: f64,
    pub lambda: f64,
    pub replay_capacity: usize,
    pub text_weight: f32,
    pub candidates: CandidateCounts,
    pub seed: u64,
    pub heads: usize,
    pub head_dim: usize,
    pub hidden: [usize; 3],
    /// Successful experiences (reward >= this) are remembered for the memory features.
    pub memory_min_reward: f32,
    /// Dropout on the scorer's query input in training (each dimension zeroed with this
    /// probability, the rest scaled up): the scorer sees each training intent every epoch and
    /// would otherwise learn the intents themselves instead of what the features say.
    #[serde(default)]
    pub query_dropout: f32,
    /// Points per epoch (from the second epoch on) whose weights are averaged (SWA).
    #[serde(default = "one")]
    pub swa_points_per_epoch: usize,
    /// Epochs of fitting the skip path alone before the network (0: none).
    #[serde(default)]
    pub linear_epochs: usize,
    /// The intent adapter's training (epochs 0: no adapter).
    #[serde(default)]
    pub adapter: AdapterConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 8,
            patience: 2,
            batch: 32,
            learning_rate: 1e-3,
            min_learning_rate: 1e-5,
            weight_decay: 1e-4,
            gamma: 0.99,
            lambda: 0.95,
            replay_capacity: 100_000,
            text_weight: 0.0,
            candidates: CandidateCounts::default(),
            seed: 42,
            heads: 4,
            head_dim: 16,
            hidden: [256, 128, 64],
            memory_min_reward: 0.5,
            query_dropout: 0.5,
            linear_epochs: 10,
            swa_points_per_epoch: 4,
            adapter: AdapterConfig::default(),
        }
    }
}

/// A trained ranker: the scorer, its calibration and how it was trained.
#[derive(Debug, Clone)]
pub struct Ranker {
    pub scorer: Scorer,
    /// The features the scorer reads, as indices into [`FEATURES`] (all of them for a ranker
    /// trained now; the older set for a ranker of an earlier release).
    pub features: Vec<usize>,
    /// The intent adapter (the memory's prototypes are computed where the ranker is loaded).
    pub adapter: Option<Adapter>,
    pub temperature: f64,
    /// Logit of "none of the candidates" in the calibrated softmax (fitted on the dev queries
    /// whose capability was not generated); None: the candidates' softmax alone.
    pub outside_logit: Option<f64>,
    pub config: TrainConfig,
    /// Dev metrics of the kept epoch, and per epoch (MRR, mean loss).
    pub dev: RankingMetrics,
    pub dev_ece: f64,
    pub dev_brier: f64,
    pub history: Vec<(f64, f64)>,
    /// Dev MRR of the skip path fitted alone, before the network (when fitted).
    pub linear_dev_mrr: Option<f64>,
    /// Dev MRR of the averaged weights at the end of each epoch from the second on.
    pub swa_dev_mrr: Vec<f64>,
    /// Share of the dev examples whose capability is among the candidates (the ceiling of
    /// every rank-based metric: a capability not generated is never ranked).
    pub dev_candidate_recall: f64,
    pub best_epoch: usize,
    pub examples: usize,
}

/// Progress of training: stage name, done, total. Returns true to cancel.
pub type Progress<'a> = dyn FnMut(&str, usize, usize) -> bool + 'a;

/// One prepared example: candidates, their features, the chosen one's position.
struct Prepared {
    cands: Vec<u32>,
    feats: Vec<f32>,
    chosen: Option<usize>,
}

fn prepare(
    cat: &Catalog,
    mem: &Memory,
    q: &Query,
    counts: CandidateCounts,
    exclude: Option<usize>,
    label: u32,
    force_label: bool,
) -> Prepared {
    let sig = mem.signals(q, exclude);
    let mut cands = candidates(cat, &sig, q, counts);
    let mut chosen = cands.iter().position(|c| *c == label);
    if chosen.is_none() && force_label {
        cands.push(label);
        chosen = Some(cands.len() - 1);
    }
    let feats = features(cat, &sig, q, &cands);
    Prepared {
        cands,
        feats,
        chosen,
    }
}

/// The scorer's inputs for a prepared example.
struct Inputs {
    hybrid: Vec<Vec<f32>>,
    tools: Vec<Vec<f32>>,
}

fn inputs(cat: &Catalog, text_weight: f32) -> Inputs {
    Inputs {
        hybrid: (0..cat.len()).map(|i| cat.hybrid(i, text_weight)).collect(),
        tools: (0..cat.len()).map(|i| cat.tool_rows(i)).collect(),
    }
}

fn cands_of<'a>(inp: &'a Inputs, p: &'a Prepared) -> Vec<Candidate<'a>> {
    p.cands
        .iter()
        .enumerate()
        .map(|(j, c)| Candidate {
            tools: &inp.tools[*c as usize],
            cap: &inp.hybrid[*c as usize],
            features: &p.feats[j * N_FEATURES..(j + 1) * N_FEATURES],
        })
        .collect()
}

/// Scores of every labelled example's candidates under `scorer`; returns per example the
/// scores and the label's position (None when the label is not a candidate).
fn score_all(
    scorer: &Scorer,
    inp: &Inputs,
    queries: &[&[f32]],
    prepared: &[Prepared],
) -> Vec<Vec<f32>> {
    prepared
        .par_iter()
        .zip(queries.par_iter())
        .map(|(p, q)| scorer.scores(q, &cands_of(inp, p)))
        .collect()
}

/// 1-based rank of the label among candidates by score (ties broken against the label).
pub fn rank_of(scores: &[f32], label: Option<usize>) -> Option<usize> {
    let l = label?;
    let s = scores[l];
    Some(
        1 + scores
            .iter()
            .enumerate()
            .filter(|(j, x)| *j != l && **x >= s)
            .count(),
    )
}

/// Train a ranker on `experiences` (the log plus imported labelled pairs), stopping early on
/// the MRR of `dev`. Memory features leave each experience itself out.
pub fn train(
    cat: &Catalog,
    experiences: &[Experience],
    dev: &[Labelled],
    cfg: &TrainConfig,
    progress: &mut Progress,
) -> Result<Ranker, Cancelled> {
    let dim = cat.text_dim;
    // memory: successful experiences; row i of memory <-> experience mem_of[i]
    let mut mem = Memory::new(dim);
    let mut mem_row = vec![None; experiences.len()];
    for (i, e) in experiences.iter().enumerate() {
        if e.reward >= cfg.memory_min_reward {
            mem_row[i] = Some(mem.cap.len());
            mem.push(&e.emb, e.chosen, &e.text);
        }
    }
    // stage 1: the intent adapter against the capabilities' prototypes. Cross-fitted: the
    // features of a training experience come from an adapter that did not see it (two folds by
    // memory row), so that the scorer learns how much the adapter's cosine is worth on intents
    // it has not seen; the adapter kept (dev, serving) is trained on all of the memory.
    mem = mem.with_model(cat, None);
    let fit =
        |rows: &dyn Fn(usize) -> bool, progress: &mut Progress| -> Result<Adapter, Cancelled> {
            let (mut emb, mut cap) = (Vec::new(), Vec::new());
            for i in (0..mem.len()).filter(|i| rows(*i)) {
                emb.extend_from_slice(&mem.emb[i * dim..(i + 1) * dim]);
                cap.push(mem.cap[i]);
            }
            train_adapter(&mem.protos, &emb, &cap, &cfg.adapter, &mut |done, total| {
                progress("adapter", done, total)
            })
        };
    let folds: Option<[Adapter; 2]> = if cfg.adapter.epochs > 0 && mem.len() >= 20 {
        Some([
            fit(&|i| i % 2 == 1, progress)?,
            fit(&|i| i % 2 == 0, progress)?,
        ])
    } else {
        None
    };
    let adapter = if cfg.adapter.epochs > 0 {
        Some(fit(&|_| true, progress)?)
    } else {
        None
    };
    let fold_mem: Vec<Memory> = match &folds {
        Some(f) => f
            .iter()
            .map(|a| {
                let mut m = mem.clone();
                m.adapter = Some(a.clone());
                m
            })
            .collect(),
        None => vec![],
    };
    mem.adapter = adapter.clone();
    let inp = inputs(cat, cfg.text_weight);
    // candidates and features, once
    let total = experiences.len() + dev.len();
    let chunk = 512;
    let mut train_p: Vec<Prepared> = Vec::with_capacity(experiences.len());
    for (k, block) in experiences.chunks(chunk).enumerate() {
        if progress("features", k * chunk, total) {
            return Err(Cancelled);
        }
        let base = k * chunk;
        train_p.par_extend(block.par_iter().enumerate().map(|(j, e)| {
            let q = Query {
                emb: &e.emb,
                text: &e.text,
                context: &e.context,
            };
            let row = mem_row[base + j];
            // the fold whose adapter did not see this row (rows without memory: either)
            let m = match (&folds, row) {
                (Some(_), Some(r)) => &fold_mem[r % 2],
                (Some(_), None) => &fold_mem[(base + j) % 2],
                (None, _) => &mem,
            };
            prepare(cat, m, &q, cfg.candidates, row, e.chosen, true)
        }));
    }
    let mut dev_p: Vec<Prepared> = Vec::with_capacity(dev.len());
    for (k, block) in dev.chunks(chunk).enumerate() {
        if progress("features", experiences.len() + k * chunk, total) {
            return Err(Cancelled);
        }
        dev_p.par_extend(block.par_iter().map(|d| {
            let q = Query {
                emb: &d.emb,
                text: &d.text,
                context: &d.context,
            };
            prepare(cat, &mem, &q, cfg.candidates, None, d.label, false)
        }));
    }
    let train_q: Vec<&[f32]> = experiences.iter().map(|e| e.emb.as_slice()).collect();
    let dev_q: Vec<&[f32]> = dev.iter().map(|d| d.emb.as_slice()).collect();

    let scfg = ScorerConfig {
        query_dim: dim,
        tool_dim: cat.graph_dim,
        cap_dim: dim + cat.graph_dim,
        n_features: N_FEATURES,
        heads: cfg.heads,
        head_dim: cfg.head_dim,
        hidden: cfg.hidden,
        seed: cfg.seed,
    };
    let mut scorer = Scorer::new(scfg);
    // the skip path first, alone: a linear softmax model over the features, which the network
    // then corrects; early stopping may keep it as it is (epoch 0)
    if cfg.linear_epochs > 0 {
        let w = fit_linear(&train_p, experiences, cfg, progress)?;
        scorer.skip_weights_mut().copy_from_slice(&w);
    }
    let mut adam = Adam::new(scorer.n_params(), cfg.learning_rate);
    adam.weight_decay = cfg.weight_decay;
    let mut replay = PrioritizedReplay::new(cfg.replay_capacity.max(1));
    for i in 0..experiences.len() {
        replay.push(i as u32);
    }
    // sessions: experience indices in step order, for TD(lambda) targets
    let mut sessions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in experiences.iter().enumerate() {
        if let Some(s) = &e.session {
            sessions.entry(s.as_str()).or_default().push(i);
        }
    }
    for v in sessions.values_mut() {
        v.sort_by_key(|i| experiences[*i].step);
    }
    let mut sessions: Vec<Vec<usize>> = sessions.into_values().filter(|v| v.len() > 1).collect();
    sessions.sort();

    let mut rng = Rng::new(cfg.seed ^ 0x5eed);
    let steps_per_epoch = experiences.len().div_ceil(cfg.batch).max(1);
    let total_steps = steps_per_epoch * cfg.epochs.max(1);
    // the dev candidates' scores under a scorer and the label's rank in each
    let dev_ranks = |scorer: &Scorer| -> (Vec<Vec<f32>>, Vec<Option<usize>>) {
        let sc = score_all(scorer, &inp, &dev_q, &dev_p);
        let ranks = sc
            .iter()
            .zip(&dev_p)
            .map(|(s, p)| rank_of(s, p.chosen))
            .collect();
        (sc, ranks)
    };
    let dev_mrr = |scorer: &Scorer| -> f64 {
        if dev.is_empty() {
            return 0.0;
        }
        metrics::ranking_metrics(&dev_ranks(scorer).1).mrr
    };
    let linear_mrr = (cfg.linear_epochs > 0).then(|| dev_mrr(&scorer));
    let mut best: Option<(f64, Scorer, usize)> = linear_mrr.map(|m| (m, scorer.clone(), 0));
    let mut history = Vec::new();
    let mut since_best = 0;
    let mut step = 0;
    let n_params = scorer.n_params();
    let swa_every = steps_per_epoch
        .div_ceil(cfg.swa_points_per_epoch.max(1))
        .max(1);
    let mut swa = (vec![0f32; n_params], 0usize);
    let mut swa_history = Vec::new();
    for epoch in 0..cfg.epochs.max(1) {
        // TD targets from the current model: V(next step) = p(chosen) at that step
        let mut target: Vec<f32> = experiences.iter().map(|e| e.reward).collect();
        for s in &sessions {
            let v: Vec<f64> = s
                .iter()
                .map(|i| {
                    let p = &train_p[*i];
                    let sc = scorer.scores(train_q[*i], &cands_of(&inp, p));
                    let pr = metrics::softmax_with_temperature(&sc, 1.0);
                    p.chosen.map_or(0.0, |c| pr[c])
                })
                .collect();
            let r: Vec<f64> = s.iter().map(|i| experiences[*i].reward as f64).collect();
            let v_next: Vec<f64> = (0..s.len())
                .map(|t| *v.get(t + 1).unwrap_or(&0.0))
                .collect();
            for (t, g) in td_lambda_targets(&r, &v_next, cfg.gamma, cfg.lambda)
                .into_iter()
                .enumerate()
            {
                target[s[t]] = g.clamp(0.0, 1.0) as f32;
            }
        }
        let mut loss_sum = 0.0;
        for b in 0..steps_per_epoch {
            if b % 20 == 0 && progress(&format!("epoch {}", epoch + 1), b, steps_per_epoch) {
                return Err(Cancelled);
            }
            let batch = replay.sample(cfg.batch, &mut rng);
            // per-thread gradient buffers in a fixed split: reproducible for a seed
            let parts: Vec<(Vec<f32>, f64, Vec<(usize, f64)>)> = batch
                .par_chunks(cfg.batch.div_ceil(2).max(1))
                .map(|part| {
                    let mut g = vec![0f32; n_params];
                    let mut loss = 0.0;
                    let mut td = Vec::with_capacity(part.len());
                    for (slot, item, w) in part {
                        let i = *item as usize;
                        let p = &train_p[i];
                        let Some(chosen) = p.chosen else { continue };
                        let y = target[i];
                        let mut pr = 0.0;
                        let mut l = 0.0;
                        let q = dropout(train_q[i], cfg.query_dropout, cfg.seed, step, i);
                        scorer.forward_backward(
                            &q,
                            &cands_of(&inp, p),
                            &mut |s: &[f32]| {
                                let (li, d, pc) = listwise_loss(s, chosen, y, *w as f32);
                                l = li;
                                pr = pc;
                                d
                            },
                            &mut g,
                        );
                        loss += l as f64;
                        td.push((*slot, (y - pr) as f64));
                    }
                    (g, loss, td)
                })
                .collect();
            let mut grad = vec![0f32; n_params];
            for (g, l, td) in parts {
                for (a, b) in grad.iter_mut().zip(g) {
                    *a += b;
                }
                loss_sum += l;
                for (slot, e) in td {
                    replay.update(slot, e);
                }
            }
            let scale = 1.0 / cfg.batch as f32;
            grad.iter_mut().for_each(|x| *x *= scale);
            let lr = cosine_lr(cfg.learning_rate, cfg.min_learning_rate, step, total_steps);
            adam.step(&mut scorer.params, &grad, lr);
            step += 1;
            // weight averaging (SWA) from the second epoch on, over points within each epoch
            if epoch > 0 && (b + 1) % swa_every == 0 {
                swa.0
                    .iter_mut()
                    .zip(&scorer.params)
                    .for_each(|(a, p)| *a += p);
                swa.1 += 1;
            }
        }
        let mrr = dev_mrr(&scorer);
        history.push((mrr, loss_sum / experiences.len().max(1) as f64));
        let mut improved = false;
        if swa.1 > 0 {
            let mut avg = scorer.clone();
            let k = swa.1 as f32;
            avg.params
                .iter_mut()
                .zip(&swa.0)
                .for_each(|(a, s)| *a = s / k);
            let m = dev_mrr(&avg);
            swa_history.push(m);
            if best.as_ref().is_none_or(|b| m > b.0) {
                best = Some((m, avg, epoch + 1));
                improved = true;
            }
        }
        if best.as_ref().is_none_or(|b| mrr > b.0) {
            best = Some((mrr, scorer.clone(), epoch + 1));
            since_best = 0;
        } else if improved {
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                break;
            }
        }
    }
    let (_, scorer, best_epoch) = best.expect("at least one epoch");
    // calibration and the kept model's dev metrics
    let (sc, ranks) = dev_ranks(&scorer);
    // dev queries whose capability is not among their candidates are labelled "none of them"
    let labels: Vec<Option<usize>> = dev_p.iter().map(|p| p.chosen).collect();
    let (temperature, outside_logit) = metrics::fit_temperature_with_outside(&sc, &labels);
    let (conf, correct) = top1_confidence(&sc, &dev_p, temperature, outside_logit);
    Ok(Ranker {
        scorer,
        features: (0..N_FEATURES).collect(),
        adapter,
        temperature,
        outside_logit,
        config: cfg.clone(),
        dev: metrics::ranking_metrics(&ranks),
        dev_ece: if conf.is_empty() {
            0.0
        } else {
            metrics::ece(&conf, &correct, 15)
        },
        dev_brier: if conf.is_empty() {
            0.0
        } else {
            metrics::brier(&conf, &correct)
        },
        history,
        linear_dev_mrr: linear_mrr,
        swa_dev_mrr: swa_history,
        dev_candidate_recall: if dev_p.is_empty() {
            0.0
        } else {
            dev_p.iter().filter(|p| p.chosen.is_some()).count() as f64 / dev_p.len() as f64
        },
        best_epoch,
        examples: experiences.len(),
    })
}

/// Inverted dropout of a query: each dimension zeroed with probability `p` (drawn from the
/// seed, the step and the example, so reproducible), the others scaled by 1 / (1 - p).
/// The skip path fitted alone: softmax regression of the chosen candidate on the features
/// (listwise loss, reward as target), Adam with cosine annealing over shuffled mini-batches.
fn fit_linear(
    prepared: &[Prepared],
    experiences: &[Experience],
    cfg: &TrainConfig,
    progress: &mut Progress,
) -> Result<Vec<f32>, Cancelled> {
    let nf = N_FEATURES;
    let mut w = vec![0f32; nf];
    let mut adam = Adam::new(nf, LINEAR_LR);
    let mut rng = Rng::new(cfg.seed ^ 0x11ea);
    let mut order: Vec<usize> = (0..prepared.len())
        .filter(|i| prepared[*i].chosen.is_some())
        .collect();
    let batch = 256;
    let steps = order.len().div_ceil(batch) * cfg.linear_epochs;
    let mut step = 0;
    for epoch in 0..cfg.linear_epochs {
        if progress("linear", epoch, cfg.linear_epochs) {
            return Err(Cancelled);
        }
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for part in order.chunks(batch) {
            let grad = part
                .par_iter()
                .map(|i| {
                    let p = &prepared[*i];
                    let mut g = vec![0f32; nf];
                    let rows: Vec<&[f32]> = p.feats.chunks_exact(nf).collect();
                    let s: Vec<f32> = rows.iter().map(|f| dot(f, &w)).collect();
                    let chosen = p.chosen.expect("filtered");
                    let (_, d, _) = listwise_loss(&s, chosen, experiences[*i].reward, 1.0);
                    for (f, dj) in rows.iter().zip(d) {
                        g.iter_mut().zip(*f).for_each(|(a, x)| *a += dj * x);
                    }
                    g
                })
                .collect::<Vec<_>>();
            // summed in order: the same result whatever the threads
            let scale = 1.0 / part.len() as f32;
            let mut sum = vec![0f32; nf];
            for g in grad {
                sum.iter_mut().zip(g).for_each(|(x, y)| *x += y * scale);
            }
            let grad = sum;
            adam.step(
                &mut w,
                &grad,
                cosine_lr(LINEAR_LR, LINEAR_LR * 0.01, step, steps),
            );
            step += 1;
        }
    }
    Ok(w)
}

fn one() -> usize {
    1
}

/// Base learning rate of [`fit_linear`] (few parameters, features of order 1).
const LINEAR_LR: f32 = 0.05;

fn dropout(q: &[f32], p: f32, seed: u64, step: usize, item: usize) -> Vec<f32> {
    if p <= 0.0 || p >= 1.0 {
        return q.to_vec();
    }
    let mut rng = Rng::new(seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ item as u64);
    let keep = 1.0 / (1.0 - p);
    q.iter()
        .map(|x| {
            if (rng.unit() as f32) < p {
                0.0
            } else {
                x * keep
            }
        })
        .collect()
}

fn top1_confidence(
    sc: &[Vec<f32>],
    p: &[Prepared],
    t: f64,
    outside: Option<f64>,
) -> (Vec<f64>, Vec<bool>) {
    sc.iter()
        .zip(p)
        .filter(|(s, _)| !s.is_empty())
        .map(|(s, p)| {
            let pr = metrics::softmax_with_outside(s, t, outside);
            let top = (0..s.len())
                .max_by(|a, b| s[*a].total_cmp(&s[*b]))
                .unwrap_or(0);
            (pr[top], p.chosen == Some(top))
        })
        .unzip()
}

impl Ranker {
    /// Scores and calibrated confidences of a query's candidates.
    pub fn score(
        &self,
        cat: &Catalog,
        sig: &Signals,
        q: &Query,
        cands: &[u32],
    ) -> (Vec<f32>, Vec<f64>) {
        if cands.is_empty() {
            return (vec![], vec![]);
        }
        let all = features(cat, sig, q, cands);
        let nf = self.features.len();
        let feats: Vec<f32> = if nf == N_FEATURES {
            all
        } else {
            all.chunks_exact(N_FEATURES)
                .flat_map(|row| self.features.iter().map(move |f| row[*f]))
                .collect()
        };
        let hyb: Vec<Vec<f32>> = cands
            .iter()
            .map(|c| cat.hybrid(*c as usize, self.config.text_weight))
            .collect();
        let tools: Vec<Vec<f32>> = cands.iter().map(|c| cat.tool_rows(*c as usize)).collect();
        let cs: Vec<Candidate> = (0..cands.len())
            .map(|j| Candidate {
                tools: &tools[j],
                cap: &hyb[j],
                features: &feats[j * nf..(j + 1) * nf],
            })
            .collect();
        let s = self.scorer.scores(q.emb, &cs);
        let p = metrics::softmax_with_outside(&s, self.temperature, self.outside_logit);
        (s, p)
    }

    /// The model as bytes: a JSON header (temperature, config, dev metrics) and the scorer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::json!({
            "format": "pg_genome-ranker-2",
            "temperature": self.temperature,
            "outside_logit": self.outside_logit,
            "config": self.config,
            "features": self.features.iter().map(|f| FEATURES[*f]).collect::<Vec<_>>(),
        })
        .to_string();
        let mut out = Vec::new();
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        // the adapter: dimension (u32, 0 = none) and its weights
        match &self.adapter {
            Some(a) => {
                out.extend_from_slice(&(a.dim as u32).to_le_bytes());
                a.w.iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            None => out.extend_from_slice(&0u32.to_le_bytes()),
        }
        out.extend_from_slice(&self.scorer.to_bytes());
        out
    }

    /// Read a model written by [`Ranker::to_bytes`]; metrics are not kept in the bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Ranker, String> {
        let n = u32::from_le_bytes(
            b.get(..4)
                .ok_or("truncated ranker")?
                .try_into()
                .map_err(|_| "truncated ranker")?,
        ) as usize;
        let head = b.get(4..4 + n).ok_or("truncated ranker header")?;
        let h: serde_json::Value =
            serde_json::from_slice(head).map_err(|e| format!("ranker header: {e}"))?;
        if h["format"] != "pg_genome-ranker-2" {
            return Err("not a pg_genome ranker".into());
        }
        // the features it was trained on, by name: a ranker of an earlier release reads the
        // subset it knows
        let features: Vec<usize> = h["features"]
            .as_array()
            .ok_or("ranker features")?
            .iter()
            .map(|n| {
                n.as_str()
                    .and_then(|n| FEATURES.iter().position(|f| *f == n))
                    .ok_or_else(|| format!("the ranker reads an unknown feature {n}"))
            })
            .collect::<Result<_, _>>()?;
        let config: TrainConfig = serde_json::from_value(h["config"].clone())
            .map_err(|e| format!("ranker config: {e}"))?;
        let temperature = h["temperature"].as_f64().ok_or("ranker temperature")?;
        // absent in a ranker of an earlier release: no outside option
        let outside_logit = h["outside_logit"].as_f64();
        let rest = &b[4 + n..];
        let d = u32::from_le_bytes(
            rest.get(..4)
                .ok_or("truncated ranker adapter")?
                .try_into()
                .map_err(|_| "truncated ranker adapter")?,
        ) as usize;
        if d > 16_000 {
            return Err("the ranker's adapter is larger than any embedding".into());
        }
        let end = 4 + d * d * 4;
        let w: Vec<f32> = rest
            .get(4..end)
            .ok_or("truncated ranker adapter")?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if w.iter().any(|x| !x.is_finite()) {
            return Err("the ranker's adapter holds non-finite weights".into());
        }
        let adapter = (d > 0).then_some(Adapter { dim: d, w });
        let scorer = Scorer::from_bytes(&rest[end..])?;
        if scorer.cfg.n_features != features.len() {
            return Err("the ranker's scorer does not read its features".into());
        }
        Ok(Ranker {
            scorer,
            features,
            adapter,
            temperature,
            outside_logit,
            config,
            dev: metrics::ranking_metrics(&[]),
            dev_ece: 0.0,
            dev_brier: 0.0,
            history: vec![],
            linear_dev_mrr: None,
            swa_dev_mrr: vec![],
            dev_candidate_recall: 0.0,
            best_epoch: 0,
            examples: 0,
        })
    }
}

/// Memory of the successful experiences (reward >= `min_reward`), with the catalog's prototypes
/// and an adapter: what a ranker trained on `experiences` remembers.
pub fn memory_of(
    cat: &Catalog,
    experiences: &[Experience],
    min_reward: f32,
    adapter: Option<Adapter>,
) -> Memory {
    let mut mem = Memory::new(cat.text_dim);
    for e in experiences.iter().filter(|e| e.reward >= min_reward) {
        mem.push(&e.emb, e.chosen, &e.text);
    }
    mem.with_model(cat, adapter)
}

/// Ranks (1-based; None when not a candidate) of each labelled intent's capability: under the
/// ranker over exact candidates, or by dense cosine over the whole catalog without one.
pub fn evaluate(
    cat: &Catalog,
    mem: &Memory,
    ranker: Option<&Ranker>,
    tests: &[Labelled],
) -> Vec<Option<usize>> {
    tests
        .par_iter()
        .map(|t| {
            let q = Query {
                emb: &t.emb,
                text: &t.text,
                context: &t.context,
            };
            match ranker {
                Some(r) => {
                    let sig = mem.signals(&q, None);
                    let cands = candidates(cat, &sig, &q, r.config.candidates);
                    let (s, _) = r.score(cat, &sig, &q, &cands);
                    rank_of(&s, cands.iter().position(|c| *c == t.label))
                }
                None => {
                    let s: Vec<f32> = (0..cat.len())
                        .map(|i| dot(&t.emb, cat.text_row(i)))
                        .collect();
                    rank_of(&s, Some(t.label as usize))
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three capabilities in 4-d text space, 2-d graph space, one tool each.
    fn toy() -> Catalog {
        let texts = [
            "compress files archive",
            "list directory contents",
            "show disk usage",
        ];
        let mut text = vec![
            1.0, 0.0, 0.0, 0.0, //
            0.0, 1.0, 0.0, 0.0, //
            0.0, 0.0, 1.0, 0.0,
        ];
        text.chunks_mut(4).for_each(l2_normalize);
        Catalog {
            names: vec!["tar".into(), "ls".into(), "df".into()],
            text_dim: 4,
            text,
            graph_dim: 2,
            graph: vec![1.0, 0.0, 0.0, 1.0, 0.7, 0.7],
            tool_graph: vec![1.0, 0.0, 0.0, 1.0, 0.7, 0.7],
            cap_tools: vec![vec![0], vec![1], vec![2]],
            stats: vec![CapabilityStats::default(); 3],
            bm25: Bm25::new(&texts),
        }
    }

    fn memory(cat: &Catalog) -> Memory {
        let mut m = Memory::new(4);
        m.push(
            &[0.0, 0.0, 0.0, 1.0],
            2,
            "free space left on the mounted volumes",
        );
        m.push(&[0.0, 0.6, 0.0, 0.8], 1, "print hidden entries too");
        m.with_model(cat, None)
    }

    #[test]
    fn memory_lexical_features_see_remembered_texts_but_not_the_query_itself() {
        let cat = toy();
        let mem = memory(&cat);
        let f = FEATURES.iter().position(|x| *x == "memory_bm25").unwrap();
        let q = Query {
            emb: &[0.0, 0.0, 0.0, 1.0],
            text: "free space on volumes",
            context: &[],
        };
        // only df's remembered intent has these words: df alone scores, and as the best
        let x = features(&cat, &mem.signals(&q, None), &q, &[0, 1, 2]);
        let row = |j: usize| &x[j * N_FEATURES..(j + 1) * N_FEATURES];
        assert!(row(2)[f] > 0.0 && row(0)[f] == 0.0 && row(1)[f] == 0.0);
        let rel = FEATURES
            .iter()
            .position(|x| *x == "memory_bm25_rel")
            .unwrap();
        assert_eq!(row(2)[rel], 1.0);
        // training on that remembered intent (memory row 0) leaves its own words out
        let x = features(&cat, &mem.signals(&q, Some(0)), &q, &[0, 1, 2]);
        assert_eq!(x[2 * N_FEATURES + f], 0.0);
        // and the lexical memory proposes df as a candidate, only when not left out
        let counts = CandidateCounts {
            dense: 0,
            lexical: 0,
            memory: 0,
            adapter: 0,
            memory_lexical: 5,
        };
        assert_eq!(
            memory_candidates_then(vec![], vec![], &mem.signals(&q, None), counts),
            vec![2]
        );
        assert!(
            memory_candidates_then(vec![], vec![], &mem.signals(&q, Some(0)), counts).is_empty()
        );
    }

    #[test]
    fn the_linear_warm_start_learns_which_feature_marks_the_chosen_candidate() {
        // 3000 queries of 6 candidates: feature 3 is higher on the chosen one, the rest is noise
        let mut rng = Rng::new(5);
        let (mut prepared, mut experiences) = (Vec::new(), Vec::new());
        for i in 0..3000 {
            let chosen = i % 6;
            let mut feats = Vec::new();
            for j in 0..6 {
                for f in 0..N_FEATURES {
                    let noise = rng.normal() as f32;
                    feats.push(if f == 3 && j == chosen {
                        noise + 1.5
                    } else {
                        noise
                    });
                }
            }
            prepared.push(Prepared {
                cands: (0..6).collect(),
                feats,
                chosen: Some(chosen),
            });
            experiences.push(Experience {
                emb: vec![],
                text: String::new(),
                context: vec![],
                chosen: chosen as u32,
                reward: 1.0,
                session: None,
                step: 0,
            });
        }
        let cfg = TrainConfig::default();
        let w = fit_linear(&prepared, &experiences, &cfg, &mut |_, _, _| false).expect("runs");
        let others = w
            .iter()
            .enumerate()
            .filter(|(f, _)| *f != 3)
            .fold(0f32, |a, (_, x)| a.max(x.abs()));
        assert!(w[3] > 0.5 && w[3] > 3.0 * others, "{w:?}");
        let top1 = prepared
            .iter()
            .filter(|p| {
                let s: Vec<f32> = p
                    .feats
                    .chunks_exact(N_FEATURES)
                    .map(|f| dot(f, &w))
                    .collect();
                rank_of(&s, p.chosen) == Some(1)
            })
            .count();
        assert!(top1 > 1500, "{top1} of 3000 first (chance: 500)");
        // the same seed gives the same weights; a cancelled fit stops
        let again = fit_linear(&prepared, &experiences, &cfg, &mut |_, _, _| false).unwrap();
        assert_eq!(w, again);
        assert!(fit_linear(&prepared, &experiences, &cfg, &mut |_, _, _| true).is_err());
    }

    #[test]
    fn a_ranker_of_an_older_feature_set_loads_and_reads_its_own_columns() {
        let cat = toy();
        let mem = memory(&cat);
        // a ranker trained on the first 17 features (the 0.7.0 set)
        let old: Vec<usize> = (0..17).collect();
        let scorer = Scorer::new(ScorerConfig {
            query_dim: 4,
            tool_dim: 2,
            cap_dim: 6,
            n_features: old.len(),
            heads: 2,
            head_dim: 2,
            hidden: [8, 4, 2],
            seed: 7,
        });
        let r = Ranker {
            scorer,
            features: old.clone(),
            adapter: None,
            temperature: 1.0,
            outside_logit: None,
            config: TrainConfig::default(),
            dev: metrics::ranking_metrics(&[]),
            dev_ece: 0.0,
            dev_brier: 0.0,
            history: vec![],
            linear_dev_mrr: None,
            swa_dev_mrr: vec![],
            dev_candidate_recall: 0.0,
            best_epoch: 0,
            examples: 0,
        };
        let back = Ranker::from_bytes(&r.to_bytes()).expect("loads");
        assert_eq!(back.features, old);
        let q = Query {
            emb: &[0.6, 0.8, 0.0, 0.0],
            text: "list files",
            context: &[],
        };
        let sig = mem.signals(&q, None);
        let (s, p) = back.score(&cat, &sig, &q, &[0, 1, 2]);
        // the scores are the scorer's on the old columns of the full feature matrix
        let all = features(&cat, &sig, &q, &[0, 1, 2]);
        let cols: Vec<f32> = all
            .chunks_exact(N_FEATURES)
            .flat_map(|row| old.iter().map(move |f| row[*f]))
            .collect();
        let hyb: Vec<Vec<f32>> = (0..3).map(|i| cat.hybrid(i, 0.0)).collect();
        let tools: Vec<Vec<f32>> = (0..3).map(|i| cat.tool_rows(i)).collect();
        let cs: Vec<Candidate> = (0..3)
            .map(|j| Candidate {
                tools: &tools[j],
                cap: &hyb[j],
                features: &cols[j * 17..(j + 1) * 17],
            })
            .collect();
        assert_eq!(s, back.scorer.scores(q.emb, &cs));
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        // an outside option is kept in the bytes, and the candidates then share less than 1
        let with_outside = Ranker {
            outside_logit: Some(0.7),
            ..r.clone()
        };
        let back = Ranker::from_bytes(&with_outside.to_bytes()).expect("loads");
        assert_eq!(back.outside_logit, Some(0.7));
        let (_, p2) = back.score(&cat, &sig, &q, &[0, 1, 2]);
        assert_eq!(p2, metrics::softmax_with_outside(&s, 1.0, Some(0.7)));
        assert!(p2.iter().sum::<f64>() < 1.0);
        // a feature name it does not know is refused
        let mut bad = r.to_bytes();
        let at = bad
            .windows(15)
            .position(|w| w == b"\"memory_kernel\"")
            .expect("the header names its features");
        bad[at + 13] = b'z';
        assert!(Ranker::from_bytes(&bad)
            .unwrap_err()
            .contains("unknown feature"));
    }
}
