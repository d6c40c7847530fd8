//! Photo quality measures for hero selection.
//!
//! All measures are on luma computed as Pillow's `convert("L")` does (ITU-R 601-2 weights in
//! 16-bit fixed point), so they can be checked against Pillow + SciPy/OpenCV on the same file:
//! - sharpness: variance of the 3x3 Laplacian [0 1 0; 1 -4 1; 0 1 0] over the whole image, with
//!   reflect-101 borders (OpenCV's default; SciPy's mode="mirror"). Blurry photos score low.
//! - brightness: mean luma / 255; clipped: share of pixels at luma <= 5 or >= 250.
//! - contrast: standard deviation of luma / 255 (RMS contrast).
//! - resolution: width, height, megapixels.
//!
//! Each becomes a 0..1 score and `score` is their weighted sum (weights sum to 1):
//! - sharpness_score  = v / (v + 100), v the Laplacian variance (100 is the usual blur cut-off: 0.5)
//! - exposure_score   = (1 - ((brightness - 0.5) / 0.5)^2) * (1 - clipped)
//! - contrast_score   = min(1, contrast / 0.2)
//! - resolution_score = min(1, shorter side / 512)  (a 512-pixel tile is what a hero is shown at)
//! - score = 0.40 sharpness + 0.25 exposure + 0.20 contrast + 0.15 resolution

use image::RgbImage;
use serde::Serialize;

pub const W_SHARPNESS: f64 = 0.40;
pub const W_EXPOSURE: f64 = 0.25;
pub const W_CONTRAST: f64 = 0.20;
pub const W_RESOLUTION: f64 = 0.15;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quality {
    pub width: u32,
    pub height: u32,
    pub megapixels: f64,
    pub sharpness: f64,
    pub brightness: f64,
    pub clipped: f64,
    pub contrast: f64,
    pub sharpness_score: f64,
    pub exposure_score: f64,
    pub contrast_score: f64,
    pub resolution_score: f64,
    pub score: f64,
}

/// Pillow's RGB -> L.
pub fn luma(img: &RgbImage) -> Vec<u8> {
    img.pixels()
        .map(|p| {
            let [r, g, b] = p.0;
            ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}

/// Reflect-101 index (…2 1 | 0 1 2 … n-1 | n-2 …) for one step outside the image.
fn r101(i: isize, n: usize) -> usize {
    if i < 0 {
        (-i) as usize
    } else if i as usize >= n {
        2 * (n - 1) - i as usize
    } else {
        i as usize
    }
}

/// Population variance of the Laplacian of an 8-bit image (w, h >= 2).
pub fn laplacian_variance(l: &[u8], w: usize, h: usize) -> f64 {
    if w < 2 || h < 2 {
        return 0.0;
    }
    let (mut sum, mut sum2) = (0f64, 0f64);
    for y in 0..h {
        let up = r101(y as isize - 1, h) * w;
        let dn = r101(y as isize + 1, h) * w;
        let row = y * w;
        for x in 0..w {
            let lf = r101(x as isize - 1, w);
            let rt = r101(x as isize + 1, w);
            let v = l[up + x] as i32 + l[dn + x] as i32 + l[row + lf] as i32 + l[row + rt] as i32
                - 4 * l[row + x] as i32;
            sum += v as f64;
            sum2 += (v as f64) * (v as f64);
        }
    }
    let n = (w * h) as f64;
    let mean = sum / n;
    (sum2 / n - mean * mean).max(0.0)
}

pub fn quality(img: &RgbImage) -> Quality {
    let (w, h) = img.dimensions();
    let l = luma(img);
    let n = l.len().max(1) as f64;
    let mut hist = [0u64; 256];
    for &v in &l {
        hist[v as usize] += 1;
    }
    let mean = hist
        .iter()
        .enumerate()
        .map(|(v, c)| v as f64 * *c as f64)
        .sum::<f64>()
        / n;
    let var = hist
        .iter()
        .enumerate()
        .map(|(v, c)| (v as f64 - mean).powi(2) * *c as f64)
        .sum::<f64>()
        / n;
    let clipped = (hist[..=5].iter().sum::<u64>() + hist[250..].iter().sum::<u64>()) as f64 / n;
    let sharpness = laplacian_variance(&l, w as usize, h as usize);
    let brightness = mean / 255.0;
    let contrast = var.sqrt() / 255.0;
    let sharpness_score = sharpness / (sharpness + 100.0);
    let exposure_score = (1.0 - ((brightness - 0.5) / 0.5).powi(2)).max(0.0) * (1.0 - clipped);
    let contrast_score = (contrast / 0.2).min(1.0);
    let resolution_score = (w.min(h) as f64 / 512.0).min(1.0);
    let score = W_SHARPNESS * sharpness_score
        + W_EXPOSURE * exposure_score
        + W_CONTRAST * contrast_score
        + W_RESOLUTION * resolution_score;
    Quality {
        width: w,
        height: h,
        megapixels: w as f64 * h as f64 / 1e6,
        sharpness,
        brightness,
        clipped,
        contrast,
        sharpness_score,
        exposure_score,
        contrast_score,
        resolution_score,
        score,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_grey_has_no_sharpness_or_contrast() {
        let q = quality(&RgbImage::from_pixel(600, 600, image::Rgb([128, 128, 128])));
        assert_eq!(q.sharpness, 0.0);
        assert_eq!(q.contrast, 0.0);
        assert!((q.brightness - 128.0 / 255.0).abs() < 1e-12);
        assert_eq!(q.resolution_score, 1.0);
        assert!(q.score < 0.45, "{q:?}");
    }

    #[test]
    fn checkerboard_laplacian_matches_hand_computation() {
        // 0/255 checkerboard: every interior and (reflect-101) border pixel sees 4 opposite
        // neighbours, so the Laplacian is +-1020 everywhere: variance 1020^2.
        let img = RgbImage::from_fn(8, 6, |x, y| {
            let v = if (x + y) % 2 == 0 { 0 } else { 255 };
            image::Rgb([v, v, v])
        });
        let q = quality(&img);
        assert!(
            (q.sharpness - 1020.0f64.powi(2)).abs() < 1e-6,
            "{}",
            q.sharpness
        );
        assert!((q.contrast - 0.5).abs() < 1e-12);
        assert_eq!(q.clipped, 1.0);
        assert_eq!(q.exposure_score, 0.0);
    }

    #[test]
    fn blur_lowers_the_score() {
        let sharp = RgbImage::from_fn(256, 256, |x, y| {
            let v = if (x / 4 + y / 4) % 2 == 0 { 60 } else { 190 };
            image::Rgb([v, v, v])
        });
        let blurred = crate::image::resize::resize_bilinear(
            &crate::image::resize::resize_bilinear(&sharp, 32, 32),
            256,
            256,
        );
        let (a, b) = (quality(&sharp), quality(&blurred));
        assert!(
            a.sharpness > 10.0 * b.sharpness,
            "{} vs {}",
            a.sharpness,
            b.sharpness
        );
        assert!(a.score > b.score);
    }

    #[test]
    fn luma_matches_pillow() {
        // Pillow 13: Image.new("RGB", (1, 1), (10, 200, 30)).convert("L").getpixel((0, 0)) == 124
        let img = RgbImage::from_pixel(1, 1, image::Rgb([10, 200, 30]));
        assert_eq!(luma(&img), vec![124]);
    }
}
