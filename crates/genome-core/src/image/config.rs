//! The registry `config` of an image-embedding model (`task = 'image-embedding'`).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

fn default_true() -> bool {
    true
}
fn default_rgb() -> ChannelOrder {
    ChannelOrder::Rgb
}

/// How to turn decoded pixels into the model's input tensor [batch, 3, crop, crop] (NCHW):
/// resize so the shorter side is `resize_shorter` (bilinear, as Pillow), centre crop `crop`,
/// scale to 0..1, subtract `mean` and divide by `std` per channel. Unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Always "image": tells an image config from a text one at a glance.
    pub kind: String,
    pub dimension: usize,
    pub input_name: String,
    pub output_name: String,
    pub resize_shorter: u32,
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    #[serde(default = "default_rgb")]
    pub channel_order: ChannelOrder,
    /// L2-normalise the output (cosine-ready, as text embeddings are).
    #[serde(default = "default_true")]
    pub normalize: bool,
}

impl ImageConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: ImageConfig =
            serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.kind != "image" {
            return bad(format!("kind must be \"image\", got \"{}\"", self.kind));
        }
        if self.dimension == 0 || self.dimension > 16000 {
            return bad(format!(
                "dimension must be between 1 and 16000, got {}",
                self.dimension
            ));
        }
        if !(8..=2048).contains(&self.crop) {
            return bad(format!(
                "crop must be between 8 and 2048, got {}",
                self.crop
            ));
        }
        if self.resize_shorter < self.crop || self.resize_shorter > 4096 {
            return bad(format!(
                "resize_shorter must be between crop ({}) and 4096, got {}",
                self.crop, self.resize_shorter
            ));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return bad("mean must be finite and std finite and > 0".into());
        }
        if self.input_name.is_empty() || self.output_name.is_empty() {
            return bad("input_name and output_name must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"kind":"image","dimension":1280,"input_name":"pixels","output_name":"features",
        "resize_shorter":256,"crop":224,"mean":[0.5,0.5,0.5],"std":[0.5,0.5,0.5]}"#;

    #[test]
    fn parses_with_defaults() {
        let c = ImageConfig::from_json(OK).unwrap();
        assert_eq!(c.channel_order, ChannelOrder::Rgb);
        assert!(c.normalize);
        assert_eq!((c.resize_shorter, c.crop, c.dimension), (256, 224, 1280));
    }

    #[test]
    fn rejects_bad_values() {
        let e = |s: String| ImageConfig::from_json(&s).unwrap_err().to_string();
        assert!(e(OK.replace("\"crop\":224", "\"crop\":300")).contains("resize_shorter must be"));
        assert!(e(OK.replace("[0.5,0.5,0.5]}", "[0.5,0,0.5]}")).contains("std"));
        assert!(e(OK.replace("\"kind\":\"image\"", "\"kind\":\"text\"")).contains("kind must be"));
        assert!(
            e(OK.replace("\"crop\":224", "\"crop\":224,\"layout\":\"nhwc\""))
                .contains("unknown field `layout`")
        );
        assert!(e(OK.replace("1280", "0")).contains("dimension"));
    }
}
