//! Capability ranking: the algorithms behind `genome.rank_capabilities`, `train_ranker` and
//! `evaluate_ranker`, free of PostgreSQL.
//!
//! - [`graph`]: the capability <-> tool bipartite graph: Node2Vec embeddings (biased walks,
//!   skip-gram with negative sampling), PageRank, clustering coefficient.
//! - [`text`]: BM25 over capability texts (the lexical feature, the same in training and serving).
//! - [`scorer`]: the hypergraph-attention scorer (intent attends over a capability's tools,
//!   combined with its hybrid embedding and features; value head 256/128/64), hand-written
//!   backprop, Adam, cosine annealing.
//! - [`replay`]: prioritized experience replay and TD(lambda) targets over sessions.
//! - [`metrics`]: ranking and calibration metrics, temperature scaling, drift tests (KS, PSI),
//!   the canary's two-proportion test.
//! - [`train`]: features and candidates for an intent, the training loop, the trained model.

pub mod adapter;
pub mod graph;
pub mod metrics;
pub mod replay;
pub mod scorer;
pub mod text;
pub mod train;
