//! Tokenization with sentence-transformers' settings: truncate at `max_tokens` (special tokens
//! included), pad to the longest text of the batch. Shipped `tokenizer.json` files often pad to a
//! fixed length instead, which changes results (position of padding) and wastes compute.

use ndarray::Array2;
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::{Error, Result};

pub struct TextTokenizer {
    inner: Tokenizer,
}

/// Model inputs for one batch, each [batch, longest].
pub struct Encoded {
    pub ids: Array2<i64>,
    pub mask: Array2<i64>,
    pub type_ids: Array2<i64>,
}

impl TextTokenizer {
    pub fn from_json(json: &[u8], max_tokens: usize) -> Result<Self> {
        let mut inner = Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer(e.to_string()))?;
        // Keep the pad token the file names (BERT: [PAD] = 0), only change the strategy.
        let mut padding = inner
            .get_padding()
            .cloned()
            .unwrap_or_else(PaddingParams::default);
        padding.strategy = PaddingStrategy::BatchLongest;
        padding.pad_to_multiple_of = None;
        inner.with_padding(Some(padding));
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Self { inner })
    }

    /// The number of tokens of each text (special tokens included, after truncation).
    pub fn lengths(&self, texts: &[&str]) -> Result<Vec<usize>> {
        texts
            .iter()
            .map(|t| {
                self.inner
                    .encode(*t, true)
                    .map(|e| e.get_attention_mask().iter().filter(|&&m| m == 1).count())
                    .map_err(|e| Error::Tokenizer(e.to_string()))
            })
            .collect()
    }

    pub fn encode_batch(&self, texts: &[&str]) -> Result<Encoded> {
        self.encode_batch_to(texts, 0)
    }

    /// As [`encode_batch`](Self::encode_batch), padded to at least `len` tokens: a part of a
    /// run padded as the whole run was gives each text the same inputs, hence the same vector.
    pub fn encode_batch_to(&self, texts: &[&str], len: usize) -> Result<Encoded> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let batch = encodings.len();
        let seq = encodings
            .iter()
            .map(|e| e.len())
            .max()
            .unwrap_or(0)
            .max(len);
        let (pad_id, pad_type, left) = self.inner.get_padding().map_or((0, 0, false), |p| {
            (
                p.pad_id as i64,
                p.pad_type_id as i64,
                matches!(p.direction, PaddingDirection::Left),
            )
        });
        let mut ids = Array2::<i64>::from_elem((batch, seq), pad_id);
        let mut mask = Array2::<i64>::zeros((batch, seq));
        let mut type_ids = Array2::<i64>::from_elem((batch, seq), pad_type);
        for (b, e) in encodings.iter().enumerate() {
            // the extra padding goes where the tokenizer puts its own
            let offset = if left { seq - e.len() } else { 0 };
            for (t, ((id, m), ty)) in e
                .get_ids()
                .iter()
                .zip(e.get_attention_mask())
                .zip(e.get_type_ids())
                .enumerate()
            {
                ids[[b, offset + t]] = *id as i64;
                mask[[b, offset + t]] = *m as i64;
                type_ids[[b, offset + t]] = *ty as i64;
            }
        }
        Ok(Encoded {
            ids,
            mask,
            type_ids,
        })
    }
}
