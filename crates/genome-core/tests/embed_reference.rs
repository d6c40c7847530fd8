//! The default model against sentence-transformers' own output (an independent reference made
//! with PyTorch from the original weights), and the embedder's error paths.

mod common;
use common::*;
use genome_core::embed::{
    tokenize::TextTokenizer, ModelConfig, Pooling, SessionSettings, TextEmbedder,
};
use genome_core::Error;

struct Ref {
    text: String,
    embedding: Vec<f32>,
}

fn reference() -> Vec<Ref> {
    std::fs::read_to_string(fixture())
        .expect("fixture readable")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Ref {
                text: v["text"].as_str().unwrap().to_string(),
                embedding: v["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn minilm_matches_sentence_transformers_in_batches_and_alone() {
    let refs = reference();
    assert_eq!(refs.len(), 73);
    let mut e = embedder("all-minilm-l6-v2");
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let mut batched = Vec::new();
    for chunk in texts.chunks(16) {
        batched.extend(e.embed(chunk).unwrap());
    }
    let mut worst = 1.0f64;
    for (i, r) in refs.iter().enumerate() {
        let alone = e.embed(&[r.text.as_str()]).unwrap().pop().unwrap();
        assert_eq!(alone.len(), 384);
        let c1 = cosine(&batched[i], &r.embedding);
        let c2 = cosine(&alone, &r.embedding);
        worst = worst.min(c1).min(c2);
        assert!(
            c1 >= 0.9999 && c2 >= 0.9999,
            "text {i} {:?}: cosine batched {c1}, alone {c2}",
            r.text
        );
        let norm: f32 = alone.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    eprintln!("minimum cosine vs sentence-transformers: {worst:.9}");
}

#[test]
fn long_text_is_truncated_at_256_tokens_like_sentence_transformers() {
    let (_, tok, cfg) = files("all-minilm-l6-v2");
    let t = TextTokenizer::from_json(&tok, cfg.max_tokens).unwrap();
    let refs = reference();
    let long = refs
        .iter()
        .map(|r| r.text.as_str())
        .max_by_key(|s| s.len())
        .unwrap();
    let enc = t.encode_batch(&[long, "short"]).unwrap();
    assert_eq!(
        enc.ids.dim(),
        (2, 256),
        "padded to the longest, truncated at 256"
    );
    assert_eq!(enc.ids[[0, 0]], 101); // [CLS]
    assert_eq!(enc.ids[[0, 255]], 102); // [SEP] kept at the end after truncation
    assert_eq!(enc.mask.row(1).iter().sum::<i64>(), 3); // [CLS] short [SEP]
    assert_eq!(enc.ids[[1, 3]], 0); // [PAD]
}

#[test]
fn huge_and_empty_inputs_embed_without_error() {
    let mut e = embedder("all-minilm-l6-v2");
    let huge = "lorem ipsum dolor sit amet ".repeat(4000); // ~108 kB
    let v = e.embed(&[huge.as_str(), ""]).unwrap();
    assert_eq!(v.len(), 2);
    assert!(v
        .iter()
        .all(|x| x.len() == 384 && x.iter().all(|f| f.is_finite())));
    // the 100 kB text is truncated: it embeds like its first 254 word pieces
    let head = "lorem ipsum dolor sit amet ".repeat(60);
    let h = e.embed(&[head.as_str()]).unwrap().pop().unwrap();
    assert!(cosine(&v[0], &h) > 0.999);
}

#[test]
fn batch_preserves_order() {
    let mut e = embedder("tiny-bert");
    let texts = [
        "alpha",
        "a much longer sentence about something else entirely",
        "",
        "beta gamma",
    ];
    let batch = e.embed(&texts).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let alone = e.embed(&[*t]).unwrap().pop().unwrap();
        assert!(cosine(&alone, &batch[i]) > 0.99999, "position {i}");
    }
    assert!(cosine(&batch[0], &batch[1]) < 0.9999);
}

#[test]
fn corrupt_onnx_is_a_load_error() {
    let (onnx, tok, cfg) = files("tiny-bert");
    let err = TextEmbedder::new(
        runtime(),
        b"definitely not onnx",
        &tok,
        cfg.clone(),
        SessionSettings::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::ModelLoad(_)), "{err}");
    let truncated = &onnx[..onnx.len() / 2];
    let err = TextEmbedder::new(runtime(), truncated, &tok, cfg, SessionSettings::default())
        .err()
        .unwrap();
    assert!(matches!(err, Error::ModelLoad(_)), "{err}");
}

#[test]
fn config_that_does_not_fit_the_model_is_rejected() {
    let (onnx, tok, cfg) = files("tiny-bert");
    let wrong_output = ModelConfig {
        output_name: "sentence_embedding".into(),
        ..cfg.clone()
    };
    let err = TextEmbedder::new(
        runtime(),
        &onnx,
        &tok,
        wrong_output,
        SessionSettings::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("sentence_embedding"), "{err}");

    let wrong_inputs = ModelConfig {
        input_names: vec!["input_ids".into(), "attention_mask".into()],
        ..cfg.clone()
    };
    assert!(matches!(
        TextEmbedder::new(
            runtime(),
            &onnx,
            &tok,
            wrong_inputs,
            SessionSettings::default()
        ),
        Err(Error::ModelMismatch(_))
    ));

    let wrong_dim = ModelConfig {
        dimension: 384,
        ..cfg.clone()
    };
    let mut e = TextEmbedder::new(
        runtime(),
        &onnx,
        &tok,
        wrong_dim,
        SessionSettings::default(),
    )
    .unwrap();
    let err = e.embed(&["x"]).unwrap_err();
    // the rank, never the shape: a shape computed by the graph could carry data
    assert!(
        matches!(err, Error::ModelMismatch(_))
            && err
                .to_string()
                .contains("is not [batch, tokens, dimension] (it has 3 dimensions")
            && !err.to_string().contains("[1, 3, 32]"),
        "{err}"
    );

    let no_pool = ModelConfig {
        pooling: Pooling::None,
        ..cfg
    };
    let mut e =
        TextEmbedder::new(runtime(), &onnx, &tok, no_pool, SessionSettings::default()).unwrap();
    assert!(matches!(e.embed(&["x"]), Err(Error::ModelMismatch(_))));
}

#[test]
fn bad_tokenizer_is_an_error() {
    let (onnx, _, cfg) = files("tiny-bert");
    let err = TextEmbedder::new(
        runtime(),
        &onnx,
        b"{\"not\": \"a tokenizer\"}",
        cfg,
        SessionSettings::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::Tokenizer(_)), "{err}");
}

#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    let (onnx, tok, cfg) = files("tiny-bert");
    let s = SessionSettings {
        provider: genome_core::embed::ExecutionProvider::Cuda,
        ..Default::default()
    };
    let r = TextEmbedder::new(runtime(), &onnx, &tok, cfg, s);
    match r {
        Err(Error::Provider { provider, reason }) => {
            assert_eq!(provider, "cuda");
            assert!(!reason.is_empty());
        }
        Err(e) => panic!("unexpected error {e}"),
        // Only possible in a `cuda` build on a machine with working CUDA libraries.
        Ok(_) => {
            if !cfg!(feature = "cuda") {
                panic!("a CUDA session in a build without the cuda feature");
            }
        }
    }
}

/// What an inference worker runs: a batch's runs spread over single-threaded sessions that
/// share one copy of the weights. Every vector has the bits one session gives (each part of a
/// run is padded as the whole run), whatever the batch, and matches sentence-transformers.
#[test]
fn parallel_sessions_give_the_bits_of_one_session() {
    let refs = reference();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let (onnx, tok, cfg) = files("all-minilm-l6-v2");
    let mut one = embedder("all-minilm-l6-v2");
    let settings = SessionSettings {
        intra_threads: 2,
        parallel_sessions: 3,
        ..Default::default()
    };
    let mut par = TextEmbedder::new(runtime(), &onnx, &tok, cfg, settings).unwrap();
    for size in [2, 7, 32, texts.len()] {
        for chunk in texts.chunks(size) {
            let a = one.embed(chunk).unwrap();
            let b = par.embed(chunk).unwrap();
            assert_eq!(a, b, "batches of {size}");
        }
    }
    let lone = par.embed(&texts[..1]).unwrap();
    assert_eq!(lone, one.embed(&texts[..1]).unwrap());
    for (v, r) in par.embed(&texts).unwrap().iter().zip(&refs) {
        assert!(cosine(v, &r.embedding) >= 0.9999, "{:?}", r.text);
    }
}

static STOP_NOW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn stop_now() -> bool {
    STOP_NOW.load(std::sync::atomic::Ordering::Relaxed)
}

/// A stop asked for stops every parallel session's runs and the batch fails as interrupted.
#[test]
fn parallel_sessions_stop_when_asked() {
    let (onnx, tok, cfg) = files("all-minilm-l6-v2");
    let settings = SessionSettings {
        parallel_sessions: 2,
        stop: Some(stop_now),
        ..Default::default()
    };
    let mut par = TextEmbedder::new(runtime(), &onnx, &tok, cfg, settings).unwrap();
    let long = "the quick brown fox jumps over the lazy dog ".repeat(30);
    let texts: Vec<&str> = (0..64).map(|_| long.as_str()).collect();
    assert_eq!(par.embed(&texts[..4]).unwrap().len(), 4);
    STOP_NOW.store(true, std::sync::atomic::Ordering::Relaxed);
    let r = par.embed(&texts);
    STOP_NOW.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(r, Err(Error::Interrupted)), "{:?}", r.err());
    assert_eq!(par.embed(&texts[..3]).unwrap().len(), 3);
}

/// Padding a part to its run's length adds the padding where the tokenizer puts its own: on
/// the left for a left-padding tokenizer, so every text keeps its tokens at the same positions.
#[test]
fn extra_padding_follows_the_tokenizers_side() {
    let (_, tok, _) = files("tiny-bert");
    let mut json: serde_json::Value = serde_json::from_slice(&tok).unwrap();
    for (side, expect_left) in [("Right", false), ("Left", true)] {
        json["padding"] = serde_json::json!({
            "strategy": "BatchLongest", "direction": side, "pad_to_multiple_of": null,
            "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"
        });
        let t = TextTokenizer::from_json(json.to_string().as_bytes(), 256).unwrap();
        let whole = t.encode_batch(&["a b c d e f", "a"]).unwrap();
        let part = t.encode_batch_to(&["a"], whole.ids.dim().1).unwrap();
        assert_eq!(part.ids.row(0), whole.ids.row(1), "{side}");
        assert_eq!(part.mask.row(0), whole.mask.row(1), "{side}");
        let mask = part.mask.row(0);
        assert_eq!(mask[0] == 0, expect_left, "{side}: {mask:?}");
    }
}
