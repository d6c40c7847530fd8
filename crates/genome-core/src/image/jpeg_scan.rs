//! Is a JPEG's entropy-coded data complete? The decoders (zune-jpeg under `image`, and
//! `jpeg-decoder` too) fill the blocks missing after an early end-of-image marker with grey: half
//! a photo with `FF D9` appended decodes to a picture. This walks the Huffman-coded scans of a
//! sequential JPEG (SOF0/SOF1, the common camera and encoder output) symbol by symbol, without
//! computing any pixel, and counts the blocks each scan holds against the number its frame needs.
//! Progressive and arithmetic-coded JPEGs are left to the decoder.

use crate::{Error, Result};

fn truncated(what: &str) -> Error {
    Error::Image(format!("the JPEG data is truncated or damaged ({what})"))
}

#[derive(Clone, Copy, Default)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
}

/// A Huffman table in the form of JPEG's Annex F decoder: per code length, the largest code and
/// where its symbols start.
#[derive(Clone, Default)]
struct Huffman {
    maxcode: [i32; 17],
    valptr: [i32; 17],
    mincode: [i32; 17],
    symbols: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], symbols: Vec<u8>) -> Self {
        let mut t = Huffman {
            maxcode: [-1; 17],
            symbols,
            ..Default::default()
        };
        let (mut code, mut k) = (0i32, 0i32);
        for l in 1..=16 {
            let n = counts[l - 1] as i32;
            if n > 0 {
                t.valptr[l] = k;
                t.mincode[l] = code;
                code += n;
                k += n;
                t.maxcode[l] = code - 1;
            }
            code <<= 1;
        }
        t
    }
}

/// Bits of the entropy-coded data, with byte stuffing removed; stops at any marker.
struct Bits<'a> {
    b: &'a [u8],
    pos: usize,
    acc: u32,
    n: u32,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32> {
        if self.n == 0 {
            let byte = *self
                .b
                .get(self.pos)
                .ok_or_else(|| truncated("no end-of-image marker"))?;
            if byte == 0xFF {
                match self.b.get(self.pos + 1) {
                    Some(0x00) => self.pos += 2,
                    _ => return Err(truncated("the scan ends before its last block")),
                }
            } else {
                self.pos += 1;
            }
            self.acc = byte as u32;
            self.n = 8;
        }
        self.n -= 1;
        Ok((self.acc >> self.n) & 1)
    }

    fn bits(&mut self, s: u32) -> Result<()> {
        for _ in 0..s {
            self.bit()?;
        }
        Ok(())
    }

    fn decode(&mut self, t: &Huffman) -> Result<u8> {
        let mut code = 0i32;
        for l in 1..=16 {
            code = (code << 1) | self.bit()? as i32;
            if t.maxcode[l] >= 0 && code <= t.maxcode[l] && code >= t.mincode[l] {
                let i = (t.valptr[l] + code - t.mincode[l]) as usize;
                return t
                    .symbols
                    .get(i)
                    .copied()
                    .ok_or_else(|| truncated("bad Huffman table"));
            }
        }
        Err(truncated("no Huffman code matches"))
    }

    /// At a restart interval's end: drop the partial byte and step over an RSTn marker.
    fn restart(&mut self) -> Result<()> {
        self.n = 0;
        match (self.b.get(self.pos), self.b.get(self.pos + 1)) {
            (Some(0xFF), Some(m)) if (0xD0..=0xD7).contains(m) => {
                self.pos += 2;
                Ok(())
            }
            _ => Err(truncated("a restart marker is missing")),
        }
    }
}

/// Refuse a sequential JPEG whose scans hold fewer blocks than its frame needs.
pub fn check_complete(b: &[u8]) -> Result<()> {
    let mut pos = 2; // after SOI
    let (mut width, mut height) = (0usize, 0usize);
    let mut comps: Vec<Component> = Vec::new();
    let mut dc: Vec<Huffman> = vec![Huffman::default(); 4];
    let mut ac: Vec<Huffman> = vec![Huffman::default(); 4];
    let mut restart_interval = 0usize;
    let mut sequential = false;
    loop {
        // the next marker (fill bytes 0xFF may precede it)
        while b.get(pos) == Some(&0xFF) && b.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let (Some(0xFF), Some(&m)) = (b.get(pos), b.get(pos + 1)) else {
            return Err(truncated("a marker is missing"));
        };
        pos += 2;
        if m == 0xD9 {
            return Ok(()); // end of image after complete scans
        }
        if (0xD0..=0xD7).contains(&m) || m == 0x01 {
            continue;
        }
        let len = match (b.get(pos), b.get(pos + 1)) {
            (Some(&hi), Some(&lo)) => ((hi as usize) << 8) | lo as usize,
            _ => return Err(truncated("a segment is cut")),
        };
        let seg = b
            .get(pos + 2..pos + len)
            .ok_or_else(|| truncated("a segment is cut"))?;
        pos += len;
        match m {
            0xC0 | 0xC1 => {
                sequential = true;
                if seg.len() < 6 {
                    return Err(truncated("short frame header"));
                }
                height = ((seg[1] as usize) << 8) | seg[2] as usize;
                width = ((seg[3] as usize) << 8) | seg[4] as usize;
                comps = seg[6..]
                    .chunks_exact(3)
                    .take(seg[5] as usize)
                    .map(|c| Component {
                        id: c[0],
                        h: (c[1] >> 4).max(1) as usize,
                        v: (c[1] & 15).max(1) as usize,
                    })
                    .collect();
            }
            // progressive, lossless, arithmetic: not checked here
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Ok(()),
            0xC4 => {
                let mut s = seg;
                while s.len() >= 17 {
                    let (class, id) = ((s[0] >> 4) as usize, (s[0] & 15) as usize);
                    let counts: [u8; 16] = s[1..17].try_into().expect("16 bytes");
                    let n: usize = counts.iter().map(|c| *c as usize).sum();
                    let syms = s
                        .get(17..17 + n)
                        .ok_or_else(|| truncated("short Huffman table"))?
                        .to_vec();
                    if id < 4 {
                        let t = Huffman::new(&counts, syms);
                        if class == 0 {
                            dc[id] = t
                        } else {
                            ac[id] = t
                        }
                    }
                    s = &s[17 + n..];
                }
            }
            0xDD if seg.len() >= 2 => restart_interval = ((seg[0] as usize) << 8) | seg[1] as usize,
            0xDA => {
                if !sequential || comps.is_empty() || width == 0 || height == 0 {
                    return Ok(()); // nothing this check understands
                }
                let n = *seg.first().ok_or_else(|| truncated("short scan header"))? as usize;
                let mut scan = Vec::with_capacity(n);
                for c in seg
                    .get(1..1 + 2 * n)
                    .ok_or_else(|| truncated("short scan header"))?
                    .chunks_exact(2)
                {
                    let comp = *comps
                        .iter()
                        .find(|x| x.id == c[0])
                        .ok_or_else(|| truncated("unknown component"))?;
                    scan.push((comp, (c[1] >> 4) as usize & 3, (c[1] & 15) as usize & 3));
                }
                let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
                let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
                // blocks per MCU and MCUs in the scan (interleaved, or one component alone)
                let (mcus, per_mcu): (usize, Vec<usize>) = if scan.len() == 1 {
                    let c = scan[0].0;
                    let cw = (width * c.h).div_ceil(hmax);
                    let ch = (height * c.v).div_ceil(vmax);
                    (cw.div_ceil(8) * ch.div_ceil(8), vec![1])
                } else {
                    (
                        width.div_ceil(8 * hmax) * height.div_ceil(8 * vmax),
                        scan.iter().map(|(c, _, _)| c.h * c.v).collect(),
                    )
                };
                let mut bits = Bits {
                    b,
                    pos,
                    acc: 0,
                    n: 0,
                };
                for mcu in 0..mcus {
                    if restart_interval > 0 && mcu > 0 && mcu % restart_interval == 0 {
                        bits.restart()?;
                    }
                    for ((_, td, ta), blocks) in scan.iter().zip(&per_mcu) {
                        for _ in 0..*blocks {
                            let s = bits.decode(&dc[*td])? as u32;
                            bits.bits(s.min(16))?;
                            let mut k = 1;
                            while k < 64 {
                                let rs = bits.decode(&ac[*ta])?;
                                let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
                                if s == 0 {
                                    if r == 15 {
                                        k += 16;
                                        continue;
                                    }
                                    break;
                                }
                                k += r;
                                bits.bits(s)?;
                                k += 1;
                            }
                        }
                    }
                }
                pos = bits.pos;
                // the rest of the scan's last byte is padding; skip to the next marker
                while pos < b.len()
                    && !(b[pos] == 0xFF && b.get(pos + 1).is_some_and(|x| *x != 0x00))
                {
                    pos += 1;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, RgbImage};

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 3) as u8, (y * 2) as u8, ((x ^ y) % 251) as u8])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn complete_jpegs_pass_and_cut_ones_with_an_end_marker_do_not() {
        for (w, h) in [(640, 480), (33, 17), (8, 8), (1, 300)] {
            let full = jpeg(w, h);
            assert!(check_complete(&full).is_ok(), "{w}x{h}");
            for cut in [full.len() / 2, full.len() * 9 / 10] {
                let mut part = full[..cut].to_vec();
                part.extend_from_slice(&[0xFF, 0xD9]);
                assert!(
                    check_complete(&part).is_err(),
                    "{w}x{h} cut at {cut} of {}",
                    full.len()
                );
            }
        }
    }

    #[test]
    fn garbage_after_the_header_is_an_error_not_a_panic() {
        let full = jpeg(64, 64);
        let mut bad = full.clone();
        let n = bad.len();
        for b in &mut bad[n / 2..n - 2] {
            *b = 0xAA;
        }
        let _ = check_complete(&bad); // no panic, whatever the verdict
        assert!(check_complete(&full[..full.len() / 3]).is_err());
    }
}
