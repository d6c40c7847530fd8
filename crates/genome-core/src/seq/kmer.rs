//! K-mer featurisers: a sequence as the counts of its k-mers, normalised (frequencies, TF-IDF
//! or centred log-ratio), optionally hashed to a fixed dimension, then L2-normalised so that
//! pgvector's cosine distance compares them. A featuriser is a registry model: its
//! [`KmerConfig`] (and, for TF-IDF, the document frequencies it was fitted on) is what is
//! stored and versioned.
//!
//! K-mers that contain an ambiguous base (anything but A, C, G, T) are skipped, the usual
//! choice (RDP's classifier and SINTAX do the same).

use serde::{Deserialize, Serialize};

use super::{for_each_kmer, mix, revcomp};

/// How counts become features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Counts divided by their sum.
    Frequency,
    /// Frequencies times the inverse document frequency fitted on a corpus
    /// (ln((1 + n) / (1 + df)) + 1, scikit-learn's smooth IDF).
    TfIdf,
    /// Centred log-ratio of the counts with a pseudo-count of 0.5 over the dimensions.
    Clr,
}

/// A k-mer featuriser's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KmerConfig {
    /// K-mer length, 1 to 32 (above 12 a hashed `dim` is required).
    pub k: usize,
    /// Count a k-mer and its reverse complement as one (strand-independent features).
    pub canonical: bool,
    pub norm: Norm,
    /// Hash the k-mers into this many dimensions with a random sign (feature hashing); None:
    /// one dimension per k-mer (4^k, or the canonical ones only).
    pub dim: Option<usize>,
    /// Seed of the hash.
    #[serde(default)]
    pub seed: u64,
}

/// Largest k with one dimension per k-mer (4^12 = 16.8M dimensions would not be a vector).
pub const MAX_DENSE_K: usize = 12;
/// Largest dimension of a featuriser's output (pgvector's `vector` stores at most 16,000).
pub const MAX_DIM: usize = 16_000;

impl KmerConfig {
    /// Check the settings; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=32).contains(&self.k) {
            return Err(format!("k must be between 1 and 32, not {}", self.k));
        }
        match self.dim {
            Some(d) if d == 0 || d > MAX_DIM => {
                Err(format!("dim must be between 1 and {MAX_DIM}, not {d}"))
            }
            None if self.k > MAX_DENSE_K => Err(format!(
                "k = {} needs a hashed dim (one dimension per k-mer stops at k = {MAX_DENSE_K})",
                self.k
            )),
            None if self.dense_dim() > MAX_DIM => Err(format!(
                "k = {} gives {} dimensions, more than {MAX_DIM}: give a hashed dim",
                self.k,
                self.dense_dim()
            )),
            _ => Ok(()),
        }
    }

    /// Dimensions with one per k-mer: 4^k, or the canonical k-mers only
    /// ((4^k + 4^(k/2)) / 2 for even k, with the palindromes, 4^k / 2 for odd k).
    fn dense_dim(&self) -> usize {
        let all = 1usize << (2 * self.k.min(MAX_DENSE_K + 1));
        if !self.canonical {
            all
        } else if self.k.is_multiple_of(2) {
            (all + (1usize << self.k)) / 2
        } else {
            all / 2
        }
    }
}

/// A featuriser ready to run: its config, the dense index of canonical k-mers and, for TF-IDF,
/// the IDF weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Featurizer {
    pub config: KmerConfig,
    /// For a dense canonical featuriser: the dimension of each k-mer (its canonical form's).
    index: Vec<u32>,
    /// IDF per dimension (TF-IDF only), and the corpus size it was fitted on.
    pub idf: Vec<f32>,
    pub fitted_on: usize,
    dim: usize,
}

impl Featurizer {
    /// A featuriser for `config` (TF-IDF needs [`Featurizer::fit`] before use).
    pub fn new(config: KmerConfig) -> Result<Self, String> {
        config.validate()?;
        let (index, dim) = match config.dim {
            Some(d) => (vec![], d),
            None if config.canonical => {
                let n = 1usize << (2 * config.k);
                let mut index = vec![u32::MAX; n];
                let mut next = 0u32;
                for x in 0..n as u64 {
                    let c = x.min(revcomp(x, config.k));
                    if index[c as usize] == u32::MAX {
                        index[c as usize] = next;
                        next += 1;
                    }
                    index[x as usize] = index[c as usize];
                }
                (index, next as usize)
            }
            None => (vec![], 1usize << (2 * config.k)),
        };
        Ok(Self {
            config,
            index,
            idf: vec![],
            fitted_on: 0,
            dim,
        })
    }

    /// The output dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The (dimension, sign) of each unambiguous k-mer of `seq` (upper-case IUPAC), in order.
    pub fn kmers(&self, seq: &[u8], out: &mut Vec<(u32, f32)>) {
        out.clear();
        let k = self.config.k;
        for_each_kmer(seq, k, |x| {
            let c = if self.config.canonical {
                x.min(revcomp(x, k))
            } else {
                x
            };
            out.push(match self.config.dim {
                Some(d) => {
                    let h = mix(c ^ self.config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    ((h % d as u64) as u32, if h >> 63 == 0 { 1.0 } else { -1.0 })
                }
                None if self.config.canonical => (self.index[x as usize], 1.0),
                None => (x as u32, 1.0),
            });
        });
    }

    /// The raw (signed, for hashing) counts per dimension.
    pub fn counts(&self, seq: &[u8]) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        let mut ks = Vec::with_capacity(seq.len());
        self.kmers(seq, &mut ks);
        for (i, s) in ks {
            v[i as usize] += s;
        }
        v
    }

    /// Fit the IDF weights on a corpus (TF-IDF; other norms ignore them).
    pub fn fit(&mut self, corpus: &[&[u8]]) {
        let mut df = vec![0u32; self.dim];
        let mut seen = vec![u32::MAX; self.dim];
        let mut ks = Vec::new();
        for (j, s) in corpus.iter().enumerate() {
            self.kmers(s, &mut ks);
            for (i, _) in &ks {
                if seen[*i as usize] != j as u32 {
                    seen[*i as usize] = j as u32;
                    df[*i as usize] += 1;
                }
            }
        }
        let n = corpus.len() as f32;
        self.idf = df
            .iter()
            .map(|d| ((1.0 + n) / (1.0 + *d as f32)).ln() + 1.0)
            .collect();
        self.fitted_on = corpus.len();
    }

    /// The feature vector of a sequence (upper-case IUPAC), L2-normalised; all zeros when it
    /// has no unambiguous k-mer.
    pub fn embed(&self, seq: &[u8]) -> Result<Vec<f32>, String> {
        let mut v = self.counts(seq);
        let total: f32 = v.iter().map(|x| x.abs()).sum();
        if total == 0.0 {
            return Ok(v);
        }
        match self.config.norm {
            Norm::Frequency => v.iter_mut().for_each(|x| *x /= total),
            Norm::TfIdf => {
                if self.idf.len() != self.dim {
                    return Err("a TF-IDF featuriser must be fitted on a corpus first".into());
                }
                v.iter_mut()
                    .zip(&self.idf)
                    .for_each(|(x, w)| *x = *x / total * w);
            }
            Norm::Clr => {
                // on signed hashed counts the log-ratio keeps the sign of the count
                let logs: Vec<f32> = v.iter().map(|x| (x.abs() + 0.5).ln()).collect();
                let mean = logs.iter().sum::<f32>() / logs.len() as f32;
                v.iter_mut()
                    .zip(&logs)
                    .for_each(|(x, l)| *x = if *x < 0.0 { -(l - mean) } else { l - mean });
            }
        }
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            v.iter_mut().for_each(|x| *x /= n);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{code, revcomp_seq};
    use super::*;

    fn cfg(k: usize, canonical: bool, norm: Norm, dim: Option<usize>) -> KmerConfig {
        KmerConfig {
            k,
            canonical,
            norm,
            dim,
            seed: 7,
        }
    }

    /// Counts by brute force over the text: every window without an ambiguous base.
    fn naive(seq: &str, k: usize, canonical: bool) -> std::collections::BTreeMap<String, f32> {
        let mut m = std::collections::BTreeMap::new();
        for i in 0..=seq.len().saturating_sub(k) {
            let w = &seq[i..i + k];
            if w.len() < k || !w.bytes().all(|b| b"ACGT".contains(&b)) {
                continue;
            }
            let key = if canonical {
                let rc = String::from_utf8(revcomp_seq(w.as_bytes())).unwrap();
                w.to_string().min(rc)
            } else {
                w.to_string()
            };
            *m.entry(key).or_insert(0.0) += 1.0;
        }
        m
    }

    #[test]
    fn counts_match_a_brute_force_count_and_skip_ambiguous_kmers() {
        let seq = "ACGTTGCANNACGTGGGTACCRATTTACGACGT";
        for canonical in [false, true] {
            for k in [1, 2, 3, 4] {
                let f = Featurizer::new(cfg(k, canonical, Norm::Frequency, None)).unwrap();
                let got: Vec<f32> = f.counts(seq.as_bytes());
                let want = naive(seq, k, canonical);
                assert_eq!(got.iter().sum::<f32>(), want.values().sum::<f32>());
                let mut g: Vec<f32> = got.into_iter().filter(|x| *x > 0.0).collect();
                let mut w: Vec<f32> = want.into_values().collect();
                g.sort_by(f32::total_cmp);
                w.sort_by(f32::total_cmp);
                assert_eq!(g, w, "k {k} canonical {canonical}");
            }
        }
        // dimensions: 4^k, canonical (4^k + 4^(k/2)) / 2 for even k and 4^k / 2 for odd
        assert_eq!(
            Featurizer::new(cfg(4, false, Norm::Clr, None))
                .unwrap()
                .dim(),
            256
        );
        assert_eq!(
            Featurizer::new(cfg(4, true, Norm::Clr, None))
                .unwrap()
                .dim(),
            136
        );
        assert_eq!(
            Featurizer::new(cfg(5, true, Norm::Clr, None))
                .unwrap()
                .dim(),
            512
        );
        assert_eq!(
            Featurizer::new(cfg(32, true, Norm::Clr, Some(64)))
                .unwrap()
                .dim(),
            64
        );
    }

    #[test]
    fn canonical_features_do_not_depend_on_the_strand() {
        let seq = b"ACGTTGCATTGACCAGTAACGGGATCCA";
        let rc = revcomp_seq(seq);
        for norm in [Norm::Frequency, Norm::Clr] {
            for dim in [None, Some(97)] {
                let f = Featurizer::new(cfg(5, true, norm, dim)).unwrap();
                assert_eq!(f.embed(seq).unwrap(), f.embed(&rc).unwrap());
                let g = Featurizer::new(cfg(5, false, norm, dim)).unwrap();
                assert_ne!(g.embed(seq).unwrap(), g.embed(&rc).unwrap());
            }
        }
    }

    #[test]
    fn features_are_unit_vectors_and_tf_idf_follows_scikit_learns_smooth_idf() {
        let corpus: Vec<&[u8]> = vec![b"AAAACCCC", b"AAAAGGGG", b"ACGTACGT"];
        let mut f = Featurizer::new(cfg(2, false, Norm::TfIdf, None)).unwrap();
        assert!(f.embed(corpus[0]).is_err(), "not fitted");
        f.fit(&corpus);
        // "AA" is in 2 of 3 documents: ln(4 / 3) + 1; "GT" in 1: ln(4 / 2) + 1; unseen: ln 4 + 1
        let idx = |s: &[u8]| {
            s.iter()
                .fold(0usize, |x, b| x * 4 + code(*b).unwrap() as usize)
        };
        assert!((f.idf[idx(b"AA")] - ((4f32 / 3.0).ln() + 1.0)).abs() < 1e-6);
        assert!((f.idf[idx(b"GT")] - (2f32.ln() + 1.0)).abs() < 1e-6);
        assert!((f.idf[idx(b"TT")] - (4f32.ln() + 1.0)).abs() < 1e-6);
        // AAAACCCC: AA x3, AC x1, CC x3 -> tf * idf, L2-normalised
        let v = f.embed(corpus[0]).unwrap();
        let w = |n: f32, s: &[u8]| n / 7.0 * f.idf[idx(s)];
        let (aa, ac, cc) = (w(3.0, b"AA"), w(1.0, b"AC"), w(3.0, b"CC"));
        let norm = (aa * aa + ac * ac + cc * cc).sqrt();
        assert!((v[idx(b"AA")] - aa / norm).abs() < 1e-6);
        assert!((v[idx(b"AC")] - ac / norm).abs() < 1e-6);
        for c in [
            cfg(4, true, Norm::Clr, None),
            cfg(8, false, Norm::Frequency, Some(256)),
            cfg(21, true, Norm::Clr, Some(512)),
        ] {
            let f = Featurizer::new(c).unwrap();
            let v = f.embed(b"ACGTTGCATTGACCAGTAACGGGATCCAGGTACCATTAC").unwrap();
            let n: f32 = v.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        // nothing to count: zeros, not NaN
        let f = Featurizer::new(cfg(4, false, Norm::Clr, None)).unwrap();
        assert!(f.embed(b"ACGNNN").unwrap().iter().all(|x| *x == 0.0));
    }

    #[test]
    fn settings_out_of_range_are_refused_with_a_reason() {
        assert!(KmerConfig::validate(&cfg(0, false, Norm::Clr, None)).is_err());
        assert!(KmerConfig::validate(&cfg(33, false, Norm::Clr, Some(8))).is_err());
        let e = KmerConfig::validate(&cfg(13, false, Norm::Clr, None)).unwrap_err();
        assert!(e.contains("hashed dim"), "{e}");
        let e = KmerConfig::validate(&cfg(8, false, Norm::Clr, None)).unwrap_err();
        assert!(e.contains("65536"), "{e}");
        assert!(KmerConfig::validate(&cfg(8, true, Norm::Clr, Some(0))).is_err());
        assert!(KmerConfig::validate(&cfg(8, true, Norm::Clr, Some(16_001))).is_err());
        assert!(KmerConfig::validate(&cfg(6, true, Norm::Clr, None)).is_ok());
        // the config is what the registry stores
        let c = cfg(8, true, Norm::TfIdf, Some(512));
        let j = serde_json::to_string(&c).unwrap();
        assert!(j.contains("\"tfidf\""));
        assert_eq!(serde_json::from_str::<KmerConfig>(&j).unwrap(), c);
    }
}
