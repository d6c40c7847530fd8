//! The `config` of a row in `genome.models`: how to feed the ONNX graph and pool its output.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps (sentence-transformers' default).
    Mean,
    /// The first ([CLS]) token.
    Cls,
    /// The output already is one vector per text ([batch, dim]); used as is.
    None,
}

fn default_true() -> bool {
    true
}
fn default_max_tokens() -> usize {
    256
}
fn default_output() -> String {
    "last_hidden_state".into()
}
fn default_inputs() -> Vec<String> {
    vec![
        "input_ids".into(),
        "attention_mask".into(),
        "token_type_ids".into(),
    ]
}

/// Parsed and validated model config. Unknown keys are rejected so that a typo
/// (`"normalise"`) is an error at registration, not a silent default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub pooling: Pooling,
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Truncation length in tokens, special tokens included (sentence-transformers' max_seq_length).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "default_output")]
    pub output_name: String,
    /// Graph input names, in the roles ids, attention mask and (optionally) token type ids.
    #[serde(default = "default_inputs")]
    pub input_names: Vec<String>,
    /// Embedding dimension; checked against the registry row and the model's output.
    pub dimension: usize,
    /// DNA language models (task `sequence-embedding`): reads are given to the tokenizer as their
    /// overlapping k-mers separated by spaces, DNABERT's input (`ACGTA`, k 3: `ACG CGT GTA`).
    /// Absent: the read as it is (a nucleotide transformer's character or BPE tokenizer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dna_kmer: Option<usize>,
}

impl ModelConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: ModelConfig =
            serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.dimension == 0 || self.dimension > 16000 {
            // 16000 is pgvector's limit for the `vector` type.
            return Err(Error::Config(format!(
                "dimension must be between 1 and 16000, got {}",
                self.dimension
            )));
        }
        if self.max_tokens < 2 || self.max_tokens > 8192 {
            return Err(Error::Config(format!(
                "max_tokens must be between 2 and 8192, got {}",
                self.max_tokens
            )));
        }
        if self.dna_kmer.is_some_and(|k| !(1..=16).contains(&k)) {
            return Err(Error::Config(format!(
                "dna_kmer must be between 1 and 16, got {:?}",
                self.dna_kmer
            )));
        }
        if !(2..=3).contains(&self.input_names.len()) {
            return Err(Error::Config(format!(
                "input_names must name 2 or 3 inputs (ids, attention mask[, token type ids]), got {}",
                self.input_names.len()
            )));
        }
        if self.output_name.is_empty() || self.input_names.iter().any(|n| n.is_empty()) {
            return Err(Error::Config(
                "input and output names must not be empty".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_config_with_defaults() {
        let c = ModelConfig::from_json(r#"{"pooling":"mean","dimension":384}"#).unwrap();
        assert_eq!(c.pooling, Pooling::Mean);
        assert!(c.normalize);
        assert_eq!(c.max_tokens, 256);
        assert_eq!(c.output_name, "last_hidden_state");
        assert_eq!(
            c.input_names,
            vec!["input_ids", "attention_mask", "token_type_ids"]
        );
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let e = ModelConfig::from_json(r#"{"pooling":"mean","dimension":384,"normalise":true}"#);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("unknown field `normalise`"));
        let e = ModelConfig::from_json(r#"{"pooling":"max","dimension":384}"#);
        assert!(e.unwrap_err().to_string().contains("unknown variant `max`"));
        let e = ModelConfig::from_json(r#"{"pooling":"cls","dimension":0}"#);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("dimension must be between"));
        let e = ModelConfig::from_json(r#"{"pooling":"cls","dimension":8,"max_tokens":1}"#);
        assert!(e.unwrap_err().to_string().contains("max_tokens"));
        let e = ModelConfig::from_json(r#"{"pooling":"cls","dimension":8,"input_names":["a"]}"#);
        assert!(e.unwrap_err().to_string().contains("input_names"));
        let e = ModelConfig::from_json("not json");
        assert!(matches!(e, Err(Error::Config(_))));
    }
}
