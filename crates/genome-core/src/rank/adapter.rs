//! The intent adapter: a learned linear map W of the intent embedding (initialised to the
//! identity) under which an intent is close to the prototype of its capability. A capability's
//! prototype is the normalised sum of its text embedding and of the embeddings of the intents it
//! served successfully (the memory); the adapter is trained with a softmax over every
//! capability's prototype (temperature `tau`), each training intent's own contribution left out
//! of its capability's prototype. Its cosine is one of the scorer's features and one source of
//! candidates.

use crate::base::{dot, l2_normalize, Cancelled};
use crate::reduce::rng::Rng;

use super::scorer::gemm;

/// Prototypes: per capability the sum of its text embedding and its remembered intents (raw),
/// and that sum normalised.
#[derive(Debug, Clone, Default)]
pub struct Prototypes {
    pub dim: usize,
    pub sums: Vec<f32>,
    pub unit: Vec<f32>,
}

impl Prototypes {
    /// Prototypes from unit text embeddings (n x dim) and remembered intents with their capability.
    pub fn new(dim: usize, text: &[f32], mem_emb: &[f32], mem_cap: &[u32]) -> Self {
        let mut sums = text.to_vec();
        if dim > 0 {
            for (row, c) in mem_emb.chunks_exact(dim).zip(mem_cap) {
                let s = &mut sums[*c as usize * dim..(*c as usize + 1) * dim];
                s.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
        }
        let mut unit = sums.clone();
        if dim > 0 {
            unit.chunks_exact_mut(dim).for_each(l2_normalize);
        }
        Self { dim, sums, unit }
    }

    /// Cosine of a unit vector with capability `c`'s prototype, leaving `own` (a remembered
    /// intent of `c`) out of it when given.
    pub fn cosine(&self, v: &[f32], c: usize, own: Option<&[f32]>) -> f32 {
        let d = self.dim;
        match own {
            None => dot(v, &self.unit[c * d..(c + 1) * d]),
            Some(x) => {
                let mut p: Vec<f32> = self.sums[c * d..(c + 1) * d]
                    .iter()
                    .zip(x)
                    .map(|(a, b)| a - b)
                    .collect();
                l2_normalize(&mut p);
                dot(v, &p)
            }
        }
    }
}

/// The learned map (row-major d x d: adapted = normalise(q W)).
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    pub dim: usize,
    pub w: Vec<f32>,
}

impl Adapter {
    /// The identity map.
    pub fn identity(dim: usize) -> Self {
        let mut w = vec![0f32; dim * dim];
        (0..dim).for_each(|i| w[i * dim + i] = 1.0);
        Self { dim, w }
    }

    /// normalise(q W).
    pub fn apply(&self, q: &[f32]) -> Vec<f32> {
        let d = self.dim;
        let mut out = vec![0f32; d];
        gemm(1, d, d, q, (d, 1), &self.w, (d, 1), 0.0, &mut out, d);
        l2_normalize(&mut out);
        out
    }
}

/// Adapter training settings.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AdapterConfig {
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f32,
    pub tau: f32,
    pub seed: u64,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch: 256,
            learning_rate: 5e-4,
            tau: 0.05,
            seed: 7,
        }
    }
}

/// Train the adapter on remembered intents (`emb` unit rows, `cap` their capabilities) against
/// the prototypes, with Adam; `progress(done, total)` returns true to cancel.
pub fn train_adapter(
    protos: &Prototypes,
    emb: &[f32],
    cap: &[u32],
    cfg: &AdapterConfig,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Adapter, Cancelled> {
    let d = protos.dim;
    let n_caps = protos.unit.len() / d.max(1);
    let n = cap.len();
    let mut ad = Adapter::identity(d);
    if n == 0 || n_caps == 0 {
        return Ok(ad);
    }
    let (mut m, mut v) = (vec![0f32; d * d], vec![0f32; d * d]);
    let mut rng = Rng::new(cfg.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let steps = n.div_ceil(cfg.batch) * cfg.epochs;
    let mut t = 0;
    for _ in 0..cfg.epochs {
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for batch in order.chunks(cfg.batch) {
            if progress(t, steps) {
                return Err(Cancelled);
            }
            t += 1;
            let b = batch.len();
            let x: Vec<f32> = batch
                .iter()
                .flat_map(|i| emb[i * d..(i + 1) * d].iter().copied())
                .collect();
            // Q = X W, Qh = Q / |Q|
            let mut q = vec![0f32; b * d];
            gemm(b, d, d, &x, (d, 1), &ad.w, (d, 1), 0.0, &mut q, d);
            let norms: Vec<f32> = q
                .chunks_exact(d)
                .map(|r| r.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12))
                .collect();
            let qh: Vec<f32> = q
                .chunks_exact(d)
                .zip(&norms)
                .flat_map(|(r, nn)| r.iter().map(move |a| a / nn))
                .collect();
            // logits = Qh P^T / tau, the label's prototype without the intent itself
            let mut logits = vec![0f32; b * n_caps];
            gemm(
                b,
                d,
                n_caps,
                &qh,
                (d, 1),
                &protos.unit,
                (1, d),
                0.0,
                &mut logits,
                n_caps,
            );
            let mut own_p = vec![0f32; b * d];
            for (r, i) in batch.iter().enumerate() {
                let c = cap[*i] as usize;
                let mut p: Vec<f32> = protos.sums[c * d..(c + 1) * d]
                    .iter()
                    .zip(&emb[i * d..(i + 1) * d])
                    .map(|(a, e)| a - e)
                    .collect();
                l2_normalize(&mut p);
                logits[r * n_caps + c] = dot(&qh[r * d..(r + 1) * d], &p);
                own_p[r * d..(r + 1) * d].copy_from_slice(&p);
            }
            // softmax gradient wrt logits: (p - onehot) / (b tau)
            let scale = 1.0 / (b as f32 * cfg.tau);
            for (r, row) in logits.chunks_exact_mut(n_caps).enumerate() {
                let mx = row.iter().fold(f32::MIN, |a, x| a.max(*x / cfg.tau));
                let mut s = 0f32;
                for x in row.iter_mut() {
                    *x = (*x / cfg.tau - mx).exp();
                    s += *x;
                }
                let c = cap[batch[r]] as usize;
                for x in row.iter_mut() {
                    *x *= scale / s;
                }
                row[c] -= scale;
            }
            // dQh = G P (the label's column uses its own prototype)
            let mut dqh = vec![0f32; b * d];
            let lab: Vec<(usize, f32)> = (0..b)
                .map(|r| {
                    let c = cap[batch[r]] as usize;
                    let g = logits[r * n_caps + c];
                    logits[r * n_caps + c] = 0.0;
                    (c, g)
                })
                .collect();
            gemm(
                b,
                n_caps,
                d,
                &logits,
                (n_caps, 1),
                &protos.unit,
                (d, 1),
                0.0,
                &mut dqh,
                d,
            );
            for (r, (_, g)) in lab.iter().enumerate() {
                for k in 0..d {
                    dqh[r * d + k] += g * own_p[r * d + k];
                }
            }
            // through the normalisation: dQ = (dQh - Qh (dQh . Qh)) / |Q|
            for r in 0..b {
                let (qr, dr) = (&qh[r * d..(r + 1) * d], &mut dqh[r * d..(r + 1) * d]);
                let pr = dot(qr, dr);
                for k in 0..d {
                    dr[k] = (dr[k] - qr[k] * pr) / norms[r];
                }
            }
            // dW = X^T dQ
            let mut gw = vec![0f32; d * d];
            gemm(d, b, d, &x, (1, d), &dqh, (d, 1), 0.0, &mut gw, d);
            let tt = t as i32;
            let (c1, c2) = (1.0 - 0.9f32.powi(tt), 1.0 - 0.999f32.powi(tt));
            for k in 0..d * d {
                m[k] = 0.9 * m[k] + 0.1 * gw[k];
                v[k] = 0.999 * v[k] + 0.001 * gw[k] * gw[k];
                ad.w[k] -= cfg.learning_rate * (m[k] / c1) / ((v[k] / c2).sqrt() + 1e-8);
            }
        }
    }
    Ok(ad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        l2_normalize(&mut v);
        v
    }

    #[test]
    fn prototypes_sum_and_leave_one_out() {
        let text = [unit(&[1.0, 0.0]), unit(&[0.0, 1.0])].concat();
        let mem = [unit(&[1.0, 1.0]), unit(&[0.0, 1.0])].concat();
        let p = Prototypes::new(2, &text, &mem, &[0, 1]);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((p.sums[0] - (1.0 + s)).abs() < 1e-6 && (p.sums[1] - s).abs() < 1e-6);
        // leaving the remembered intent out gives back the text embedding
        let own = unit(&[1.0, 1.0]);
        assert!((p.cosine(&[1.0, 0.0], 0, Some(&own)) - 1.0).abs() < 1e-6);
        assert!(p.cosine(&[1.0, 0.0], 0, None) < 0.99);
    }

    #[test]
    fn identity_leaves_unit_vectors_alone() {
        let a = Adapter::identity(3);
        let q = unit(&[1.0, 2.0, 3.0]);
        let out = a.apply(&q);
        assert!(out.iter().zip(&q).all(|(x, y)| (x - y).abs() < 1e-6));
    }

    #[test]
    fn training_separates_classes_the_raw_space_confuses() {
        // two capabilities whose texts are close in dimension 0, told apart by dimension 1, which
        // their intents carry only weakly: the adapter learns to weigh dimension 1
        let mut rng = Rng::new(3);
        let d = 4;
        let text = [unit(&[1.0, 0.1, 0.0, 0.0]), unit(&[1.0, -0.1, 0.0, 0.0])].concat();
        let mut emb = Vec::new();
        let mut cap = Vec::new();
        for i in 0..400 {
            let c = i % 2;
            let sign = if c == 0 { 1.0 } else { -1.0 };
            let v = unit(&[
                1.0,
                sign * 0.05,
                rng.normal() as f32 * 0.3,
                rng.normal() as f32 * 0.3,
            ]);
            emb.extend(v);
            cap.push(c as u32);
        }
        let protos = Prototypes::new(d, &text, &emb, &cap);
        let acc = |a: &Adapter| {
            (0..cap.len())
                .filter(|i| {
                    let q = a.apply(&emb[i * d..(i + 1) * d]);
                    let s0 = protos.cosine(&q, 0, None);
                    let s1 = protos.cosine(&q, 1, None);
                    (s0 > s1) == (cap[*i] == 0)
                })
                .count() as f64
                / cap.len() as f64
        };
        let before = acc(&Adapter::identity(d));
        let cfg = AdapterConfig {
            epochs: 30,
            batch: 32,
            learning_rate: 1e-2,
            tau: 0.05,
            seed: 1,
        };
        let ad = train_adapter(&protos, &emb, &cap, &cfg, &mut |_, _| false).unwrap();
        let after = acc(&ad);
        assert!(after > 0.95 && after >= before, "{before} -> {after}");
        // cancellation
        assert!(train_adapter(&protos, &emb, &cap, &cfg, &mut |_, _| true).is_err());
    }
}
