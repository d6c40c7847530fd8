//! Model bundles: a registry entry (a sequence classifier with its config, weights, metrics and
//! fingerprint; a k-mer featuriser; an ONNX model held in the registry) as one checksummed
//! `bytea`, to move between databases. The format is genome-core's `bundle`; importing is as
//! privileged as registering a model, and every part is checked before the row is written.

use genome_core::bundle::{Bundle, BundleError, Header};
use genome_core::seq::kmer::{Featurizer, KmerConfig, Norm};
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use crate::errors::{raise, required, spi};
use crate::models::{ensure_new, require_admin};

fn corrupted(msg: String) -> ! {
    raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, msg, None)
}

/// A model version as a bundle (the production version, else the newest, when no version is
/// given). Read as the caller: exporting needs SELECT on genome.models (genome_monitor has it).
#[pg_extern(volatile, parallel_safe)]
fn export_bundle(name: &str, version: default!(Option<&str>, "NULL")) -> Vec<u8> {
    let spec = match version {
        Some(v) => format!("{name}@{v}"),
        None => name.to_string(),
    };
    let row = crate::models::resolve(Some(&spec));
    type Row = (
        Option<JsonB>,
        Option<JsonB>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<String>,
    );
    let r: Row = spi(
        "reading the model",
        Spi::connect(|client| {
            let t = client.select(
                "SELECT config, metrics, tokenizer, sha256, created_at::text, weights, onnx, onnx_path \
                   FROM genome.models WHERE id = $1",
                None,
                &[row.id.into()],
            )?;
            let mut out = None;
            for r in t {
                out = Some((
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ));
            }
            Ok::<_, pgrx::spi::SpiError>(out.unwrap_or_default())
        }),
    );
    let (config, metrics, tokenizer, sha256, created_at, weights, onnx, path) = r;
    if path.is_some() {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "model \"{}@{}\" is a file on the database server (onnx_path): a bundle carries the model's bytes",
                row.name, row.version
            ),
            Some("register the model with its bytes (genome.register_model or register_model_dir with copy => true) to export it".into()),
        );
    }
    Bundle {
        header: Header {
            name: row.name,
            version: row.version,
            task: row.task,
            dimension: row.dimension,
            config: config.map(|c| c.0).unwrap_or_default(),
            metrics: metrics.map(|m| m.0),
            tokenizer,
            sha256: sha256.unwrap_or_default(),
            created_at,
            written_by: env!("CARGO_PKG_VERSION").to_string(),
            weights_len: None,
            onnx_len: None,
        },
        weights,
        onnx,
    }
    .to_bytes()
}

/// Check a k-mer featuriser's config and weights as register_kmer_featurizer builds them.
fn check_kmer(h: &Header, weights: Option<&[u8]>) {
    let kc: KmerConfig = serde_json::from_value(h.config["featurizer"].clone())
        .unwrap_or_else(|e| corrupted(format!("bundle: bad featuriser config: {e}")));
    let f = Featurizer::new(kc.clone())
        .unwrap_or_else(|e| corrupted(format!("bundle: bad featuriser config: {e}")));
    if f.dim() as i64 != i64::from(h.dimension) {
        corrupted(format!(
            "bundle: dimension {} but its featuriser gives {}",
            h.dimension,
            f.dim()
        ));
    }
    let want = if kc.norm == Norm::TfIdf {
        Some(4 * f.dim())
    } else {
        None
    };
    if weights.map(<[u8]>::len) != want {
        corrupted("bundle: the featuriser's weights do not match its config".into());
    }
    let finite = weights.unwrap_or_default().chunks_exact(4).all(|c| {
        let v = f32::from_le_bytes(c.try_into().expect("4 bytes"));
        v.is_finite() && v >= 0.0
    });
    if !finite {
        corrupted(
            "bundle: the featuriser's IDF weights are not finite non-negative numbers".into(),
        );
    }
}

/// Register the model a bundle carries, as a staging version (promote it with
/// genome.promote_model). `name` and `version` rename it. Returns the new row's id.
#[pg_extern(volatile)]
fn import_bundle(
    bundle: &[u8],
    name: default!(Option<&str>, "NULL"),
    version: default!(Option<&str>, "NULL"),
) -> i64 {
    require_admin("importing a model bundle");
    let b = Bundle::from_bytes(bundle).unwrap_or_else(|e| {
        let code = match e {
            BundleError::Version(_) => PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            BundleError::NotABundle => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            _ => PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        };
        raise(code, e.to_string(), None)
    });
    let h = &b.header;
    let mut config = h.config.clone();
    let name = name.unwrap_or(&h.name);
    let version = version.unwrap_or(&h.version);
    ensure_new(name, version);
    let kind = h.config.get("kind").and_then(|k| k.as_str());
    match (h.task.as_str(), kind) {
        ("sequence-classifier", _) => {
            let w = b.weights.as_deref().unwrap_or_else(|| {
                corrupted("bundle: a sequence classifier without weights".into())
            });
            crate::taxonomy::check_bundle(&h.config, h.dimension, w)
                .unwrap_or_else(|e| corrupted(format!("bundle: {e}")));
            let mut digest = h.config.to_string().into_bytes();
            digest.extend_from_slice(w);
            if crate::models::sha256_hex(&digest) != h.sha256 {
                corrupted(
                    "bundle: the model's sha256 does not match its config and weights".into(),
                );
            }
            // the reference collection is this database's business: an imported classifier
            // serves without a fallback (its pinned table is another database's)
            if let Some(f) = config.get_mut("fallback").and_then(|f| f.as_object_mut()) {
                f.remove("relid");
            }
        }
        ("sequence-embedding", Some("kmer")) => check_kmer(h, b.weights.as_deref()),
        ("text-embedding" | "image-embedding", _) => {
            let onnx = b
                .onnx
                .as_deref()
                .unwrap_or_else(|| corrupted("bundle: an ONNX model without its bytes".into()));
            let id = required(
                "registering the model",
                Spi::get_one_with_args::<i64>(
                    "SELECT genome.register_model($1, $2, $3, $4, $5, $6)",
                    &[
                        name.into(),
                        version.into(),
                        onnx.to_vec().into(),
                        h.tokenizer.clone().into(),
                        JsonB(h.config.clone()).into(),
                        h.task.as_str().into(),
                    ],
                ),
            );
            spi(
                "recording the bundle's metrics",
                Spi::run_with_args(
                    "UPDATE genome.models SET metrics = $2, stage = 'staging' WHERE id = $1",
                    &[id.into(), h.metrics.clone().map(JsonB).into()],
                ),
            );
            return id;
        }
        (task, _) => raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("bundle of task \"{task}\" (kind {kind:?}) is not supported by this pg_genome"),
            None,
        ),
    }
    required(
        "registering the model",
        Spi::get_one_with_args::<i64>(
            "INSERT INTO genome.models (name, version, task, dimension, config, weights, metrics, sha256, stage) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'staging') RETURNING id",
            &[
                name.into(),
                version.into(),
                h.task.as_str().into(),
                h.dimension.into(),
                JsonB(config).into(),
                b.weights.clone().into(),
                h.metrics.clone().map(JsonB).into(),
                h.sha256.as_str().into(),
            ],
        ),
    )
}

extension_sql_file!(
    "bundles.sql",
    name = "bundles",
    requires = ["models", export_bundle, import_bundle]
);
