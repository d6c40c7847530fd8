//! An image embedding model: ONNX Runtime session + preprocessing config.

use image::RgbImage;
use ndarray::{Array3, Array4, Axis, Ix2};
use ort::session::Session;
use ort::value::TensorRef;

use super::config::{ChannelOrder, ImageConfig};
use super::resize::{resize_bilinear_window, shorter_side_size};
use crate::base::l2_normalize;
use crate::embed::embedder::build_session;
use crate::embed::interrupt;
use crate::embed::{Runtime, SessionSettings};
use crate::{Error, Result};

/// Decoded RGB -> the model's input [3, crop, crop]: resize the shorter side, centre crop,
/// scale to 0..1, (x - mean) / std, channels in the config's order.
pub fn preprocess(img: &RgbImage, cfg: &ImageConfig) -> Array3<f32> {
    let (w, h) = img.dimensions();
    let (rw, rh) = shorter_side_size(w, h, cfg.resize_shorter);
    let c = cfg.crop;
    let (left, top) = ((rw - c) / 2, (rh - c) / 2);
    // only the centre crop is resized: memory stays bounded whatever the aspect ratio
    let resized = resize_bilinear_window(img, rw, rh, left, top, c, c);
    let (left, top) = (0, 0);
    let order: [usize; 3] = match cfg.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let mut out = Array3::<f32>::zeros((3, c as usize, c as usize));
    for y in 0..c {
        for x in 0..c {
            let p = resized.get_pixel(left + x, top + y).0;
            for (ch, &src) in order.iter().enumerate() {
                let v = p[src] as f32 / 255.0;
                out[[ch, y as usize, x as usize]] = (v - cfg.mean[src]) / cfg.std[src];
            }
        }
    }
    out
}

pub struct ImageEmbedder {
    session: Session,
    config: ImageConfig,
    settings: SessionSettings,
}

impl ImageEmbedder {
    pub fn new(
        runtime: &Runtime,
        onnx: &[u8],
        config: ImageConfig,
        settings: SessionSettings,
    ) -> Result<Self> {
        config.validate()?;
        let session = build_session(runtime, onnx, settings)?;
        let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        if inputs != [config.input_name.as_str()] {
            return Err(Error::ModelMismatch(format!(
                "an image model takes one input \"{}\"; the model's inputs are {inputs:?}",
                config.input_name
            )));
        }
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if !outputs.contains(&config.output_name.as_str()) {
            return Err(Error::ModelMismatch(format!(
                "config names output \"{}\" but the model's outputs are {outputs:?}",
                config.output_name
            )));
        }
        Ok(Self {
            session,
            config,
            settings,
        })
    }

    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    pub fn settings(&self) -> SessionSettings {
        self.settings
    }

    /// Run the model once on a grey image: registration refuses a model whose output does not
    /// fit its config before anyone uses it.
    pub fn self_check(&mut self) -> Result<()> {
        let c = self.config.crop;
        let grey = RgbImage::from_pixel(c, c, image::Rgb([128, 128, 128]));
        let t = preprocess(&grey, &self.config);
        self.embed(&[t]).map(|_| ())
    }

    /// Embed preprocessed images (from [`preprocess`]); one vector each, in order.
    pub fn embed(&mut self, images: &[Array3<f32>]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.config.crop as usize;
        let mut batch = Array4::<f32>::zeros((images.len(), 3, c, c));
        for (i, im) in images.iter().enumerate() {
            if im.dim() != (3, c, c) {
                return Err(Error::Inference(format!(
                    "image {i} has shape {:?}, expected [3, {c}, {c}]",
                    im.dim()
                )));
            }
            batch.index_axis_mut(Axis(0), i).assign(im);
        }
        let inf = |e: ort::Error| Error::Inference(e.to_string());
        let input = TensorRef::from_array_view(batch.view()).map_err(inf)?;
        let name = self.config.output_name.clone();
        let dim = self.config.dimension;
        let n = images.len();
        let inputs = vec![(self.config.input_name.clone(), input.into_dyn())];
        let mut vectors =
            interrupt::run(&mut self.session, inputs, self.settings.stop, |outputs| {
                let value = outputs
                    .get(name.as_str())
                    .ok_or_else(|| Error::ModelMismatch(format!("output \"{name}\" missing")))?;
                let arr = value.try_extract_array::<f32>().map_err(|e| {
                    Error::ModelMismatch(format!("output \"{name}\" is not a float32 tensor: {e}"))
                })?;
                // the rank only: a shape computed by the graph could carry data, never echo it
                let rank = arr.ndim();
                let h = arr
                    .into_dimensionality::<Ix2>()
                    .ok()
                    .filter(|h| h.dim() == (n, dim))
                    .ok_or_else(|| {
                        Error::ModelMismatch(format!(
                            "output \"{name}\" is not [batch, {dim}] (it has {rank} dimensions)"
                        ))
                    })?;
                Ok(h.outer_iter()
                    .map(|r| r.to_vec())
                    .collect::<Vec<Vec<f32>>>())
            })?;
        if vectors.iter().flatten().any(|x| !x.is_finite()) {
            return Err(Error::Inference(
                "model produced NaN or infinite values".into(),
            ));
        }
        if self.config.normalize {
            vectors.iter_mut().for_each(|v| l2_normalize(v));
        }
        Ok(vectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_crops_the_centre_and_normalises() {
        let cfg = ImageConfig::from_json(
            r#"{"kind":"image","dimension":4,"input_name":"x","output_name":"y","resize_shorter":8,
                "crop":8,"mean":[0.5,0.25,0.0],"std":[0.5,0.25,1.0],"channel_order":"bgr"}"#,
        )
        .unwrap();
        // 16 x 8: already the right height after resize to shorter side 8, width 16 -> crop 4..12.
        let img = RgbImage::from_fn(16, 8, |x, _| {
            image::Rgb([255, if x < 8 { 0 } else { 255 }, 51])
        });
        let t = preprocess(&img, &cfg);
        assert_eq!(t.dim(), (3, 8, 8));
        // channel 0 is blue: 51/255 = 0.2, mean 0, std 1.
        assert!((t[[0, 0, 0]] - 0.2).abs() < 1e-6);
        // channel 2 is red: (1 - 0.5) / 0.5 = 1.
        assert!((t[[2, 3, 3]] - 1.0).abs() < 1e-6);
        // green: left half of the crop 0 -> -1, right half 1 -> 3.
        assert!((t[[1, 0, 0]] + 1.0).abs() < 1e-6);
        assert!((t[[1, 0, 7]] - 3.0).abs() < 1e-6);
    }
}
