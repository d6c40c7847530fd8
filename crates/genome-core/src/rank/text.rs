//! BM25 over capability texts: the lexical feature of the ranker, computed the same way when
//! training and when serving (PostgreSQL's full-text search finds the lexical candidates; the
//! scorer's feature is this score, so that both paths see the same number).
//!
//! Tokens: lower-cased runs of ASCII letters and digits, minus a short English stop-word list, no
//! stemming. Scoring: Okapi BM25 with k1 = 1.5, b = 0.75 and Lucene's idf
//! `ln(1 + (N - df + 0.5) / (df + 0.5))`.

use std::collections::HashMap;

const K1: f64 = 1.5;
const B: f64 = 0.75;

/// Words too common to tell capabilities apart (a subset of scikit-learn's English list).
const STOP: &[&str] = &[
    "a", "about", "all", "an", "and", "any", "are", "as", "at", "be", "by", "can", "do", "does",
    "each", "for", "from", "given", "has", "have", "how", "i", "if", "in", "into", "is", "it",
    "its", "me", "my", "of", "on", "one", "or", "our", "so", "some", "that", "the", "their",
    "them", "then", "there", "these", "this", "those", "to", "using", "via", "was", "we", "what",
    "when", "which", "while", "who", "will", "with", "you", "your",
];

/// The tokens of a text, in order (repeats kept).
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_ascii_lowercase())
        .filter(|t| !STOP.contains(&t.as_str()))
        .collect()
}

/// Mean document length (0 without documents).
fn mean_len(doc_len: &[u32]) -> f64 {
    if doc_len.is_empty() {
        0.0
    } else {
        doc_len.iter().map(|x| *x as f64).sum::<f64>() / doc_len.len() as f64
    }
}

/// An inverted index over documents (capability texts) for BM25 scores.
#[derive(Debug, Clone, Default)]
pub struct Bm25 {
    /// term -> (document, term frequency), documents ascending
    postings: HashMap<String, Vec<(u32, u32)>>,
    doc_len: Vec<u32>,
    avg_len: f64,
}

impl Bm25 {
    /// Index `docs` (document i = `docs[i]`).
    pub fn new<S: AsRef<str>>(docs: &[S]) -> Self {
        let mut postings: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        let mut doc_len = Vec::with_capacity(docs.len());
        for (i, d) in docs.iter().enumerate() {
            let toks = tokens(d.as_ref());
            doc_len.push(toks.len() as u32);
            let mut tf: HashMap<String, u32> = HashMap::new();
            for t in toks {
                *tf.entry(t).or_default() += 1;
            }
            for (t, n) in tf {
                postings.entry(t).or_default().push((i as u32, n));
            }
        }
        for p in postings.values_mut() {
            p.sort_unstable();
        }
        let avg_len = mean_len(&doc_len);
        Self {
            postings,
            doc_len,
            avg_len,
        }
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.doc_len.len()
    }

    /// Whether no document is indexed.
    pub fn is_empty(&self) -> bool {
        self.doc_len.is_empty()
    }

    fn idf(&self, df: usize) -> f64 {
        let n = self.doc_len.len() as f64;
        (1.0 + (n - df as f64 + 0.5) / (df as f64 + 0.5)).ln()
    }

    fn term_score(&self, idf: f64, tf: u32, doc: u32) -> f64 {
        let tf = tf as f64;
        let norm = 1.0 - B + B * self.doc_len[doc as usize] as f64 / self.avg_len.max(1e-9);
        idf * tf * (K1 + 1.0) / (tf + K1 * norm)
    }

    /// Distinct query terms that occur in the index (a repeated query word counts once).
    fn query_terms<'a>(&'a self, query: &str) -> Vec<(&'a str, &'a Vec<(u32, u32)>)> {
        let mut q = tokens(query);
        q.sort();
        q.dedup();
        q.iter()
            .filter_map(|t| self.postings.get_key_value(t.as_str()))
            .map(|(k, v)| (k.as_str(), v))
            .collect()
    }

    /// BM25 scores of every document with at least one query term: (document, score).
    pub fn scores(&self, query: &str) -> Vec<(u32, f64)> {
        self.scores_without(query, None)
    }

    /// This index with more text appended to some documents: `extra` gives (document, text)
    /// pairs, each text's tokens added to that document (document expansion: a capability's
    /// text plus the intents remembered for it). Documents out of range are ignored.
    pub fn expanded<'a>(&self, extra: impl IntoIterator<Item = (u32, &'a str)>) -> Bm25 {
        let mut add: HashMap<String, HashMap<u32, u32>> = HashMap::new();
        let mut doc_len = self.doc_len.clone();
        for (d, text) in extra {
            let Some(len) = doc_len.get_mut(d as usize) else {
                continue;
            };
            for t in tokens(text) {
                *len += 1;
                *add.entry(t).or_default().entry(d).or_default() += 1;
            }
        }
        let mut postings = self.postings.clone();
        for (t, docs) in add {
            let p = postings.entry(t).or_default();
            for (d, n) in docs {
                match p.binary_search_by_key(&d, |x| x.0) {
                    Ok(i) => p[i].1 += n,
                    Err(i) => p.insert(i, (d, n)),
                }
            }
        }
        let avg_len = mean_len(&doc_len);
        Bm25 {
            postings,
            doc_len,
            avg_len,
        }
    }

    /// BM25 scores of every document with at least one query term, best first, as [`scores`]
    /// but with `without`'s tokens taken out of document `without.0` (leave one out: an indexed
    /// text scored against the index without itself; document frequencies are kept).
    ///
    /// [`scores`]: Bm25::scores
    pub fn scores_without(&self, query: &str, without: Option<(u32, &str)>) -> Vec<(u32, f64)> {
        let mut v: Vec<(u32, f64)> = self
            .dense_scores_without(query, without)
            .into_iter()
            .enumerate()
            .filter(|(_, x)| *x > 0.0)
            .map(|(d, x)| (d as u32, x))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// [`Bm25::scores_without`] as one score per document (0: no query term matched), in
    /// document order: what a caller that looks up many documents or wants a top k reads.
    pub fn dense_scores_without(&self, query: &str, without: Option<(u32, &str)>) -> Vec<f64> {
        let own_toks = without.map(|(_, text)| tokens(text)).unwrap_or_default();
        let mut own_tf: HashMap<&str, u32> = HashMap::new();
        for t in &own_toks {
            *own_tf.entry(t.as_str()).or_default() += 1;
        }
        let own = without.map(|(d, _)| d);
        let own_len = own.map_or(0.0, |d| {
            (self.doc_len.get(d as usize).copied().unwrap_or(0) as usize)
                .saturating_sub(own_toks.len()) as f64
        });
        // dense accumulators: every score is positive, so 0 means no query term matched
        let mut acc = vec![0f64; self.doc_len.len()];
        for (term, posting) in self.query_terms(query) {
            let idf = self.idf(posting.len());
            for (doc, tf) in posting {
                acc[*doc as usize] += if Some(*doc) == own {
                    let tf = tf.saturating_sub(own_tf.get(term).copied().unwrap_or(0));
                    if tf == 0 {
                        continue;
                    }
                    let tf = tf as f64;
                    let norm = 1.0 - B + B * own_len / self.avg_len.max(1e-9);
                    idf * tf * (K1 + 1.0) / (tf + K1 * norm)
                } else {
                    self.term_score(idf, *tf, *doc)
                };
            }
        }
        acc
    }

    /// The BM25 score of the query for the given documents only (0 where no term matches).
    pub fn score_docs(&self, query: &str, docs: &[u32]) -> Vec<f64> {
        let terms = self.query_terms(query);
        docs.iter()
            .map(|d| {
                terms
                    .iter()
                    .filter_map(|(_, p)| {
                        p.binary_search_by_key(d, |x| x.0)
                            .ok()
                            .map(|i| self.term_score(self.idf(p.len()), p[i].1, *d))
                    })
                    .sum()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_lowercase_split_and_drop_stop_words() {
        assert_eq!(
            tokens("Create a gzipped archive from a directory (tar.gz)!"),
            vec!["create", "gzipped", "archive", "directory", "tar", "gz"]
        );
        assert!(tokens("the of and").is_empty());
    }

    #[test]
    fn scores_match_the_formula_computed_by_hand() {
        let docs = ["compress files", "list files files", "show disk usage"];
        let ix = Bm25::new(&docs);
        // "files": df 2 of 3 -> idf = ln(1 + (3 - 2 + 0.5) / 2.5) = ln 1.6; lengths 2, 3, 3.
        let idf = (1.6f64).ln();
        let avg = 8.0 / 3.0;
        let doc1 = idf * 2.0 * 2.5 / (2.0 + 1.5 * (0.25 + 0.75 * 3.0 / avg));
        let doc0 = idf * 2.5 / (1.0 + 1.5 * (0.25 + 0.75 * 2.0 / avg));
        let s = ix.scores("files");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, 1, "the document with the term twice comes first");
        assert!((s[0].1 - doc1).abs() < 1e-12 && (s[1].1 - doc0).abs() < 1e-12);
        // score_docs agrees, and is 0 for a document without the terms
        let d = ix.score_docs("files files", &[0, 1, 2]);
        assert!((d[0] - doc0).abs() < 1e-12 && (d[1] - doc1).abs() < 1e-12 && d[2] == 0.0);
        assert!(ix.scores("nothing here").is_empty());
    }

    #[test]
    fn rare_terms_weigh_more() {
        let docs = [
            "disk usage",
            "disk space",
            "disk partitions",
            "memory usage",
        ];
        let ix = Bm25::new(&docs);
        let s = ix.scores("memory disk");
        assert_eq!(s[0].0, 3, "memory (df 1) outweighs disk (df 3)");
    }

    #[test]
    fn expanded_equals_an_index_of_the_longer_documents() {
        let docs = ["compress files", "list files", "show disk usage"];
        let ix = Bm25::new(&docs).expanded([
            (1, "list the files sorted by size"),
            (2, "free space"),
            (9, "ignored"),
        ]);
        let long = Bm25::new(&[
            "compress files",
            "list files list files sorted size",
            "show disk usage free space",
        ]);
        for q in ["files size", "free disk", "list", "compress"] {
            let (a, b) = (ix.scores(q), long.scores(q));
            assert_eq!(a.len(), b.len(), "{q}");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.0, y.0, "{q}");
                assert!((x.1 - y.1).abs() < 1e-12, "{q}");
            }
        }
    }

    #[test]
    fn scores_without_takes_a_text_out_of_its_document() {
        let ix = Bm25::new(&["compress files", "list files", "show disk usage"])
            .expanded([(1, "sort by size"), (2, "free space")]);
        // without its own words, "sort size" only matches nothing; with them, document 1
        assert_eq!(ix.scores("sort size")[0].0, 1);
        assert!(ix
            .scores_without("sort size", Some((1, "sort by size")))
            .is_empty());
        // other documents keep their scores; the own one is scored at its shorter length
        let a = ix.scores_without("files free", Some((1, "sort by size")));
        let full = ix.scores("files free");
        let d2 = |v: &[(u32, f64)]| v.iter().find(|x| x.0 == 2).unwrap().1;
        assert!((d2(&a) - d2(&full)).abs() < 1e-12);
        let d1 = |v: &[(u32, f64)]| v.iter().find(|x| x.0 == 1).unwrap().1;
        assert!(
            d1(&a) > d1(&full),
            "a shorter document scores its match higher"
        );
        assert_eq!(ix.scores_without("files", None), ix.scores("files"));
    }
}
