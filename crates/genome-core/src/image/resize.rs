//! Pillow's bilinear resize (`Image.resize(size, Image.BILINEAR)`, libImaging/Resample.c),
//! reproduced step for step: the filter support grows with the downscale factor (antialiasing),
//! coefficients are normalised and turned into 22-bit fixed point, and the horizontal pass runs
//! first with its result rounded to 8 bits before the vertical pass. Matching it exactly lets
//! embed_image's features be checked against a Pillow + PyTorch reference to 1e-4 and better.

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position: first input index and fixed-point weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// The coefficients of the output positions `range` (of `out_size`): each position's weights
/// depend only on the sizes, so a window costs memory for the window alone.
fn coeffs(in_size: usize, out_size: usize, range: std::ops::Range<usize>) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(range.len());
    let mut k = vec![0i32; range.len() * ksize];
    let mut w = vec![0f64; ksize];
    for (j, xx) in range.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero; `as` does the same.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let n = xmax.max(0) as usize;
        let mut ww = 0.0;
        for (x, wx) in w[..n].iter_mut().enumerate() {
            let v = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
            *wx = v;
            ww += v;
        }
        for x in 0..n {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            k[j * ksize + x] = if v < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            };
        }
        bounds.push((xmin as usize, n));
    }
    Coeffs { ksize, bounds, k }
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Columns `x0 .. x0 + cw` of the image resized to width `out_w` (height unchanged).
fn horizontal(src: &RgbImage, out_w: u32, x0: u32, cw: u32) -> RgbImage {
    let (w, h) = src.dimensions();
    let c = coeffs(w as usize, out_w as usize, x0 as usize..(x0 + cw) as usize);
    let mut out = RgbImage::new(cw, h);
    let inp = src.as_raw();
    let o = out.as_mut();
    let (wi, wo) = (w as usize * 3, cw as usize * 3);
    for y in 0..h as usize {
        let row = &inp[y * wi..(y + 1) * wi];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.k[xx * c.ksize..xx * c.ksize + n];
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, kv) in k.iter().enumerate() {
                let p = (xmin + i) * 3;
                ss[0] += row[p] as i32 * kv;
                ss[1] += row[p + 1] as i32 * kv;
                ss[2] += row[p + 2] as i32 * kv;
            }
            let q = y * wo + xx * 3;
            o[q] = clip8(ss[0]);
            o[q + 1] = clip8(ss[1]);
            o[q + 2] = clip8(ss[2]);
        }
    }
    out
}

/// Rows `y0 .. y0 + ch` of the image resized to height `out_h` (width unchanged).
fn vertical(src: &RgbImage, out_h: u32, y0: u32, ch: u32) -> RgbImage {
    let (w, h) = src.dimensions();
    let c = coeffs(h as usize, out_h as usize, y0 as usize..(y0 + ch) as usize);
    let mut out = RgbImage::new(w, ch);
    let inp = src.as_raw();
    let o = out.as_mut();
    let stride = w as usize * 3;
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.k[yy * c.ksize..yy * c.ksize + n];
        for x in 0..stride {
            let mut ss = 1i32 << (PRECISION_BITS - 1);
            for (i, kv) in k.iter().enumerate() {
                ss += inp[(ymin + i) * stride + x] as i32 * kv;
            }
            o[yy * stride + x] = clip8(ss);
        }
    }
    out
}

/// Resize to exactly (out_w, out_h) as Pillow's BILINEAR does.
pub fn resize_bilinear(src: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    resize_bilinear_window(src, out_w, out_h, 0, 0, out_w, out_h)
}

/// The window (left, top, cw, ch) of the image resized to (out_w, out_h), as Pillow's BILINEAR
/// resize followed by a crop gives it, computed for the window alone: memory and time follow
/// the window and the source, never the full resized size (a 100000x1 strip resized to a
/// shorter side of 256 would be 6.5 billion pixels).
#[allow(clippy::too_many_arguments)]
pub fn resize_bilinear_window(
    src: &RgbImage,
    out_w: u32,
    out_h: u32,
    left: u32,
    top: u32,
    cw: u32,
    ch: u32,
) -> RgbImage {
    assert!(
        left + cw <= out_w && top + ch <= out_h,
        "window inside the resized image"
    );
    let (w, h) = src.dimensions();
    let tmp;
    let mid = if out_w != w || left != 0 || cw != w {
        tmp = horizontal(src, out_w, left, cw);
        &tmp
    } else {
        src
    };
    if out_h != h || top != 0 || ch != h {
        vertical(mid, out_h, top, ch)
    } else {
        mid.clone()
    }
}

/// Size with the shorter side `target` and the aspect ratio kept, rounded half up in integers
/// (the reference pipeline computes it the same way).
pub fn shorter_side_size(w: u32, h: u32, target: u32) -> (u32, u32) {
    let (w64, h64, t) = (w as u64, h as u64, target as u64);
    if w <= h {
        (target, ((h64 * t + w64 / 2) / w64).max(1) as u32)
    } else {
        (((w64 * t + h64 / 2) / h64).max(1) as u32, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant_and_identity_is_exact() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 77]));
        let r = resize_bilinear(&img, 11, 50);
        assert!(r.pixels().all(|p| p.0 == [200, 10, 77]));
        let g = RgbImage::from_fn(9, 7, |x, y| image::Rgb([(x * 20) as u8, (y * 30) as u8, 5]));
        assert_eq!(resize_bilinear(&g, 9, 7), g);
    }

    #[test]
    fn matches_pillow_on_a_small_ramp() {
        // Pillow 13.0: Image.frombytes('RGB', (6, 1), bytes(r for x in range(6) for r in
        // (x * 50, 255 - x * 50, 7))).resize((4, 1), Image.BILINEAR)
        // gives (19, 236, 7), (89, 166, 7), (161, 94, 7), (231, 24, 7).
        let g = RgbImage::from_fn(6, 1, |x, _| {
            image::Rgb([(x * 50) as u8, (255 - x * 50) as u8, 7])
        });
        let r = resize_bilinear(&g, 4, 1);
        let reds: Vec<u8> = r.pixels().map(|p| p.0[0]).collect();
        let greens: Vec<u8> = r.pixels().map(|p| p.0[1]).collect();
        assert_eq!(reds, vec![19, 89, 161, 231]);
        assert_eq!(greens, vec![236, 166, 94, 24]);
    }

    #[test]
    fn a_window_equals_the_crop_of_the_full_resize() {
        let g = RgbImage::from_fn(37, 23, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x * y) % 251) as u8])
        });
        for (ow, oh) in [(50, 31), (20, 12), (37, 23), (9, 60)] {
            let full = resize_bilinear(&g, ow, oh);
            let (l, t, cw, ch) = (ow / 4, oh / 3, ow / 2, oh / 2);
            let win = resize_bilinear_window(&g, ow, oh, l, t, cw, ch);
            let crop = image::imageops::crop_imm(&full, l, t, cw, ch).to_image();
            assert_eq!(win, crop, "{ow}x{oh}");
        }
    }

    #[test]
    fn an_extreme_strip_costs_only_its_window() {
        // 100000x1 -> shorter side 256 would be 25.6M x 256 pixels (19.6 GB); the window is 224x224.
        let strip = RgbImage::from_fn(100_000, 1, |x, _| image::Rgb([(x % 256) as u8, 0, 0]));
        let (rw, rh) = shorter_side_size(100_000, 1, 256);
        let win = resize_bilinear_window(&strip, rw, rh, (rw - 224) / 2, (rh - 224) / 2, 224, 224);
        assert_eq!(win.dimensions(), (224, 224));
    }

    #[test]
    fn shorter_side_rounds_half_up() {
        assert_eq!(shorter_side_size(640, 480, 256), (341, 256));
        assert_eq!(shorter_side_size(480, 640, 256), (256, 341));
        assert_eq!(shorter_side_size(3, 2, 256), (384, 256));
        assert_eq!(shorter_side_size(100, 100, 256), (256, 256));
        assert_eq!(shorter_side_size(5, 2, 3), (8, 3)); // 7.5 rounds up
    }
}
