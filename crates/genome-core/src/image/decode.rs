//! Decoding untrusted image bytes with bounded memory.
//!
//! The declared width and height are read from the header and checked against `max_pixels`
//! before any pixel buffer is allocated, so a 20000x20000 header in a few hundred bytes is an
//! error, not a 1.6 GB allocation. The decoders' own allocation limit backs this up.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest width x height accepted (the decoded RGB image takes 3 bytes a pixel).
    pub max_pixels: u64,
    /// Largest encoded size accepted.
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 50_000_000,
            max_bytes: 64 << 20,
        }
    }
}

fn image_err(e: ImageError) -> Error {
    match e {
        ImageError::Limits(l) => Error::ImageLimit(l.to_string()),
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::Image("the image data is truncated".into())
        }
        other => Error::Image(other.to_string()),
    }
}

/// The format, from the magic bytes; only the formats we decode are accepted.
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat> {
    if bytes.is_empty() {
        return Err(Error::Image("empty input (0 bytes)".into()));
    }
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => Ok(f),
        Ok(other) => Err(Error::Image(format!(
            "{other:?} images are not supported (JPEG, PNG and WebP are)"
        ))),
        Err(_) => Err(Error::Image(
            "not a JPEG, PNG or WebP image (unrecognised header)".into(),
        )),
    }
}

/// A JPEG's entropy-coded data ends with the EOI marker (FF D9). The decoder fills a cut-off
/// file with grey instead of failing, so a truncated upload would be embedded as a half-grey
/// picture; we refuse it instead. Some cameras append data after EOI, so search the tail.
fn check_jpeg_complete(bytes: &[u8]) -> Result<()> {
    let tail = &bytes[bytes.len().saturating_sub(64 << 10)..];
    if tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(Error::Image(
            "the image data is truncated (JPEG without an end-of-image marker)".into(),
        ))
    }
}

/// Decode to 8-bit RGB, with the EXIF orientation applied (phone photos are often stored
/// sideways with an orientation tag).
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    if bytes.len() > limits.max_bytes {
        return Err(Error::ImageLimit(format!(
            "{} bytes; the limit is {} bytes (genome.max_image_bytes)",
            bytes.len(),
            limits.max_bytes
        )));
    }
    let format = sniff(bytes)?;
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes)?;
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = image::Limits::default();
    // Decoders may hold the image at up to 16 bits x 4 channels while converting.
    l.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(l);
    let mut decoder = reader.into_decoder().map_err(image_err)?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > limits.max_pixels {
        return Err(Error::ImageLimit(format!(
            "{w}x{h} is {pixels} pixels; the limit is {} (genome.max_image_pixels)",
            limits.max_pixels
        )));
    }
    if w == 0 || h == 0 {
        return Err(Error::Image(format!("image has no pixels ({w}x{h})")));
    }
    if format == ImageFormat::Jpeg {
        // after the size check: the scan walk is bounded by the accepted bytes
        super::jpeg_scan::check_complete(bytes)?;
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(image_err)?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 2) as u8, 40]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn decodes_png_and_jpeg() {
        let d = DecodeLimits::default();
        let p = decode(&png(40, 30), &d).unwrap();
        assert_eq!(p.dimensions(), (40, 30));
        assert_eq!(p.get_pixel(3, 2).0, [21, 10, 90]);
        let j = decode(&jpeg(64, 48), &d).unwrap();
        assert_eq!(j.dimensions(), (64, 48));
    }

    #[test]
    fn refuses_garbage_empty_and_other_formats() {
        let d = DecodeLimits::default();
        let e = |b: &[u8]| decode(b, &d).unwrap_err().to_string();
        assert!(e(b"").contains("empty input"));
        assert!(e(b"hello, this is text and not an image").contains("unrecognised header"));
        assert!(e(b"GIF89a\x01\x00\x01\x00\x00\x00\x00").contains("Gif images are not supported"));
        // A PNG signature followed by garbage.
        let mut bad = png(8, 8)[..8].to_vec();
        bad.extend_from_slice(&[0x13; 40]);
        assert!(matches!(decode(&bad, &d), Err(Error::Image(_))));
    }

    #[test]
    fn refuses_half_a_jpeg_with_an_end_marker_appended() {
        let full = jpeg(640, 480);
        assert!(decode(&full, &DecodeLimits::default()).is_ok());
        let mut half = full[..full.len() / 2].to_vec();
        half.extend_from_slice(&[0xFF, 0xD9]);
        let e = decode(&half, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(e, Error::Image(_)) && e.to_string().contains("truncated"),
            "{e}"
        );
    }

    #[test]
    fn refuses_truncated_images() {
        let d = DecodeLimits::default();
        let j = jpeg(64, 48);
        let e = decode(&j[..j.len() / 2], &d).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let p = png(64, 48);
        assert!(matches!(
            decode(&p[..p.len() - 20], &d),
            Err(Error::Image(_))
        ));
    }

    #[test]
    fn refuses_huge_declared_size_before_allocating() {
        // A valid PNG header declaring 20000 x 20000 (1.2 GB as RGB), and no pixel data.
        let mut b = png(1, 1);
        b[16..20].copy_from_slice(&20000u32.to_be_bytes());
        b[20..24].copy_from_slice(&20000u32.to_be_bytes());
        let crc = crc32(&b[12..29]);
        b[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&b, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(e, Error::ImageLimit(_)), "{e}");
        assert!(e.to_string().contains("20000x20000"), "{e}");
        let e = decode(
            &png(100, 100),
            &DecodeLimits {
                max_pixels: 5000,
                max_bytes: 1 << 20,
            },
        );
        assert!(matches!(e, Err(Error::ImageLimit(_))));
        let e = decode(
            &png(10, 10),
            &DecodeLimits {
                max_pixels: 5000,
                max_bytes: 10,
            },
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("genome.max_image_bytes"));
    }

    pub(crate) fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
}
