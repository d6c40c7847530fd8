//! Image embeddings and photo quality: `genome.embed_image`, `genome.embed_images`,
//! `genome.image_quality`. Decoding, preprocessing and the quality measures are in
//! genome-core (`image`); here: arguments, limits from GUCs, errors.

use genome_core::image::{decode, preprocess, quality, DecodeLimits, ImageConfig};
use genome_core::Error;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::embed::resolve_cached;
use crate::errors::{report_in, OrReport};
use crate::gucs;
use crate::models::ModelRow;
use crate::vector::Vector;

pub fn limits() -> DecodeLimits {
    DecodeLimits {
        max_pixels: gucs::MAX_IMAGE_PIXELS.get().max(1) as u64,
        max_bytes: gucs::MAX_IMAGE_BYTES.get().max(1) as usize,
    }
}

fn image_model(fcinfo: pg_sys::FunctionCallInfo, model: Option<&str>) -> ModelRow {
    let spec = crate::models::spec_or_default(model, true);
    // SAFETY: the fcinfo pgrx passed to the calling #[pg_extern]
    unsafe { resolve_cached(fcinfo, Some(&spec)) }
}

/// Report an error naming the image (its position in a batch, 1-based as SQL arrays).
fn image_error(e: Error, which: Option<usize>) -> ! {
    report_in(e, which.map(|i| format!("image {i}")))
}

/// The model's preprocessing settings, cloned out of the session cache. Decoding runs outside the
/// cache's borrow (a bad image raises an ERROR mid-decode, and a batch decodes between model
/// calls), so embedding an image probes the cache twice: a hash lookup, not a second load.
fn config_of(row: &ModelRow) -> ImageConfig {
    crate::models::require_task(row, "image-embedding");
    // from the row (what the session is built with): no session is loaded for it, so a backend
    // served by the inference workers holds none
    ImageConfig::from_json(&row.config).or_report()
}

/// Decode and preprocess; the decoded pixels are freed before the next image is read, so a
/// batch holds one full-size image at a time plus the small model inputs.
fn prepare(bytes: &[u8], cfg: &ImageConfig, which: Option<usize>) -> ndarray::Array3<f32> {
    let img = decode(bytes, &limits()).unwrap_or_else(|e| image_error(e, which));
    preprocess(&img, cfg)
}

/// Embed one image (JPEG, PNG or WebP bytes). NULL image gives NULL; NULL model means
/// `genome.default_image_model`. STABLE like genome.embed, never IMMUTABLE.
#[pg_extern(stable, parallel_safe)]
fn embed_image(
    image: Option<&[u8]>,
    model: default!(Option<&str>, "NULL"),
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<Vector> {
    let bytes = image?;
    let row = image_model(fcinfo, model);
    let cfg = config_of(&row);
    let t = prepare(bytes, &cfg, None);
    let mut v = crate::models::embed_images(&row, &[t]);
    Some(Vector(v.pop().expect("one vector per image")))
}

/// Embed many images, in order; NULL elements give NULL. Runs `genome.batch_size` images per
/// model call and honours a cancel between calls. A bad image is an ERROR naming its position.
#[pg_extern(stable, parallel_safe)]
fn embed_images(
    images: Option<Array<&[u8]>>,
    model: default!(Option<&str>, "NULL"),
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<Vec<Option<Vector>>> {
    let images = images?;
    let items: Vec<Option<&[u8]>> = images.iter().collect();
    let mut out: Vec<Option<Vector>> = vec![None; items.len()];
    let present: Vec<usize> = (0..items.len()).filter(|i| items[*i].is_some()).collect();
    if present.is_empty() {
        return Some(out);
    }
    let row = image_model(fcinfo, model);
    let cfg = config_of(&row);
    let batch = gucs::BATCH_SIZE.get().max(1) as usize;
    for chunk in present.chunks(batch) {
        pg_sys::check_for_interrupts!();
        let tensors: Vec<_> = chunk
            .iter()
            .map(|&i| prepare(items[i].unwrap(), &cfg, Some(i + 1)))
            .collect();
        let vecs = crate::models::embed_images(&row, &tensors);
        for (&i, v) in chunk.iter().zip(vecs) {
            out[i] = Some(Vector(v));
        }
    }
    Some(out)
}

/// One image decoded once: its embedding with `model` (an image model; name or name@version)
/// and its quality score as `image_quality` gives it (rounded to 4 decimals). For cluster_pet,
/// which needs both for every new photo.
pub fn embed_with_quality(bytes: &[u8], model: &str) -> (Vec<f32>, f32) {
    let row = crate::models::resolve(Some(model));
    let cfg = config_of(&row);
    let img = decode(bytes, &limits()).unwrap_or_else(|e| image_error(e, None));
    let score = (quality(&img).score * 1e4).round() / 1e4;
    let t = preprocess(&img, &cfg);
    drop(img);
    let mut v = crate::models::embed_images(&row, &[t]);
    (v.pop().expect("one vector per image"), score as f32)
}

/// Photo quality of an image: sharpness (variance of the Laplacian), exposure, contrast,
/// resolution and a combined 0..1 `score` (see genome-core's image::quality for the formulas,
/// also in the README). STABLE: the size limits are settings.
#[pg_extern(stable, parallel_safe)]
pub fn image_quality(image: Option<&[u8]>) -> Option<pgrx::JsonB> {
    let bytes = image?;
    let img = decode(bytes, &limits()).unwrap_or_else(|e| image_error(e, None));
    let q = quality(&img);
    let r4 = |x: f64| (x * 1e4).round() / 1e4;
    Some(pgrx::JsonB(serde_json::json!({
        "score": r4(q.score),
        "sharpness": {"laplacian_variance": r4(q.sharpness), "score": r4(q.sharpness_score)},
        "exposure": {"brightness": r4(q.brightness), "clipped": r4(q.clipped), "score": r4(q.exposure_score)},
        "contrast": {"rms": r4(q.contrast), "score": r4(q.contrast_score)},
        "resolution": {"width": q.width, "height": q.height, "megapixels": r4(q.megapixels), "score": r4(q.resolution_score)},
    })))
}
