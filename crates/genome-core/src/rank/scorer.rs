//! The hypergraph-attention capability scorer (SHGAT-style), with hand-written backprop, Adam,
//! cosine annealing and the listwise loss used for training.
//!
//! For one intent `q` (the query embedding) and a list of candidate capabilities, each with its
//! tools `t_j`, its capability vector `e` and its features `f`, the score of a candidate is
//!
//! ```text
//! u_h    = Wq_h q                     (per head h, head_dim values; once per query)
//! k_hj   = Wk_h t_j,  v_hj = Wv_h t_j
//! alpha  = softmax_j(u_h . k_hj / sqrt(head_dim)),  z_h = sum_j alpha_hj v_hj   (0 without tools)
//! g      = (A q) ⊙ (B e)              (A q once per query)
//! x      = [z_1 .. z_H, g, f]
//! score  = W4 relu(W3 relu(W2 relu(W1 x + b1) + b2) + b3) + b4  +  w_skip . f + b_skip
//! ```
//!
//! The candidates of a query are processed as one matrix (one row per candidate, one row per
//! tool for the key/value projections) and every product with more than a handful of rows goes
//! through `matrixmultiply::sgemm`, forward and backward.
//!
//! # Parameter layout
//!
//! [`Scorer::params`] holds every weight, flat, in this order, with `m = heads * head_dim` and
//! `in = 2 m + n_features`; every matrix is row-major with one row per output unit (PyTorch's
//! `Linear` convention: `out x in`), and head `h` of a projection is its rows
//! `h*head_dim .. (h+1)*head_dim`:
//!
//! | block  | shape                  |
//! |--------|------------------------|
//! | Wq     | m x query_dim          |
//! | Wk     | m x tool_dim           |
//! | Wv     | m x tool_dim           |
//! | A      | m x query_dim          |
//! | B      | m x cap_dim            |
//! | W1, b1 | hidden0 x in, hidden0  |
//! | W2, b2 | hidden1 x hidden0, hidden1 |
//! | W3, b3 | hidden2 x hidden1, hidden2 |
//! | W4, b4 | 1 x hidden2, 1         |
//! | w_skip | n_features             |
//! | b_skip | 1                      |
//!
//! The projections have no biases. `b4` and `b_skip` both shift every score of a query equally;
//! the listwise loss is blind to such a shift, so their gradients are zero in training (they are
//! kept so that the parameterisation is the documented one).

use crate::base::dot;
use crate::reduce::rng::Rng;
use serde::{Deserialize, Serialize};

/// Shape and seed of a [`Scorer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScorerConfig {
    /// Dimension of the intent (query) embedding, e.g. 384.
    pub query_dim: usize,
    /// Dimension of a tool embedding, e.g. 64.
    pub tool_dim: usize,
    /// Dimension of a capability vector, e.g. 448.
    pub cap_dim: usize,
    /// Number of scalar features per candidate (may be 0).
    pub n_features: usize,
    /// Number of attention heads, e.g. 4.
    pub heads: usize,
    /// Dimension of one head, e.g. 16.
    pub head_dim: usize,
    /// Widths of the value head's three hidden layers, e.g. `[256, 128, 64]`.
    pub hidden: [usize; 3],
    /// Seed of the weight initialisation.
    pub seed: u64,
}

impl ScorerConfig {
    /// Checks that every dimension but `n_features` is positive and that the parameter count
    /// fits in memory arithmetic; returns the reason otherwise.
    pub fn validate(&self) -> Result<(), String> {
        let dims = [
            ("query_dim", self.query_dim),
            ("tool_dim", self.tool_dim),
            ("cap_dim", self.cap_dim),
            ("heads", self.heads),
            ("head_dim", self.head_dim),
            ("hidden[0]", self.hidden[0]),
            ("hidden[1]", self.hidden[1]),
            ("hidden[2]", self.hidden[2]),
        ];
        for (name, v) in dims {
            if v == 0 {
                return Err(format!("scorer config: {name} must be positive"));
            }
        }
        match Layout::of(self) {
            Some(l) if l.total <= (isize::MAX as usize) / 8 => Ok(()),
            _ => Err("scorer config: dimensions too large".into()),
        }
    }
}

/// One candidate capability of a query: borrowed views of its inputs.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// Its tools' embeddings, `n_tools x tool_dim`, row-major; may be empty.
    pub tools: &'a [f32],
    /// Its capability vector (`cap_dim` values).
    pub cap: &'a [f32],
    /// Its features (`n_features` values).
    pub features: &'a [f32],
}

/// The scorer: its configuration and all its weights (see the module docs for the layout).
#[derive(Clone, Debug)]
pub struct Scorer {
    /// Shape and seed.
    pub cfg: ScorerConfig,
    /// All weights, flat, in the order given in the module documentation.
    pub params: Vec<f32>,
}

/// Offsets of the parameter blocks in the flat vector.
#[derive(Clone, Copy, Debug)]
struct Layout {
    m: usize,
    input: usize,
    wq: usize,
    wk: usize,
    wv: usize,
    a: usize,
    b: usize,
    w1: usize,
    b1: usize,
    w2: usize,
    b2: usize,
    w3: usize,
    b3: usize,
    w4: usize,
    b4: usize,
    wskip: usize,
    bskip: usize,
    total: usize,
}

impl Layout {
    /// The layout of a configuration, or None when a size overflows.
    fn of(c: &ScorerConfig) -> Option<Layout> {
        let m = c.heads.checked_mul(c.head_dim)?;
        let input = m.checked_mul(2)?.checked_add(c.n_features)?;
        let [h0, h1, h2] = c.hidden;
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<usize> {
            let start = at;
            at = at.checked_add(n)?;
            Some(start)
        };
        let wq = take(m.checked_mul(c.query_dim)?)?;
        let wk = take(m.checked_mul(c.tool_dim)?)?;
        let wv = take(m.checked_mul(c.tool_dim)?)?;
        let a = take(m.checked_mul(c.query_dim)?)?;
        let b = take(m.checked_mul(c.cap_dim)?)?;
        let w1 = take(h0.checked_mul(input)?)?;
        let b1 = take(h0)?;
        let w2 = take(h1.checked_mul(h0)?)?;
        let b2 = take(h1)?;
        let w3 = take(h2.checked_mul(h1)?)?;
        let b3 = take(h2)?;
        let w4 = take(h2)?;
        let b4 = take(1)?;
        let wskip = take(c.n_features)?;
        let bskip = take(1)?;
        let total = take(0)?;
        Some(Layout {
            m,
            input,
            wq,
            wk,
            wv,
            a,
            b,
            w1,
            b1,
            w2,
            b2,
            w3,
            b3,
            w4,
            b4,
            wskip,
            bskip,
            total,
        })
    }
}

/// `C = A B + beta C` for an `m x k` matrix A and a `k x n` matrix B given with arbitrary
/// (row, column) strides, and a row-major C with row stride `rsc`. Checks every bound, so that
/// the call into sgemm is sound whatever the arguments.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        rsc >= n && (m - 1) * rsc + n <= c.len(),
        "gemm: C too small"
    );
    if k == 0 {
        for r in 0..m {
            for v in &mut c[r * rsc..r * rsc + n] {
                *v *= beta;
            }
        }
        return;
    }
    assert!((m - 1) * rsa + (k - 1) * csa < a.len(), "gemm: A too small");
    assert!((k - 1) * rsb + (n - 1) * csb < b.len(), "gemm: B too small");
    sgemm_raw(m, k, n, a, (rsa, csa), b, (rsb, csb), beta, c, rsc);
}

/// The unsafe call itself; [`gemm`] has checked the bounds.
#[allow(unsafe_code)] // matrixmultiply's GEMM takes raw pointers
#[allow(clippy::too_many_arguments)]
fn sgemm_raw(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) {
    // SAFETY: the caller (`gemm`) asserted that every element A[i,k] = a[i*rsa + k*csa],
    // B[k,j] = b[k*rsb + j*csb] and C[i,j] = c[i*rsc + j] (i < m, k, j < n) lies inside its
    // slice; C's elements are distinct (column stride 1, row stride >= n) and C is borrowed
    // mutably, so it aliases neither A nor B. Strides are below isize::MAX since the slices are.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            1,
        );
    }
}

/// `n x dout` = relu(x W^T + b) for an `n x din` x and a `dout x din` W.
fn dense_relu(x: &[f32], n: usize, din: usize, w: &[f32], b: &[f32]) -> Vec<f32> {
    let dout = b.len();
    let mut h = Vec::with_capacity(n * dout);
    for _ in 0..n {
        h.extend_from_slice(b);
    }
    gemm(n, din, dout, x, (din, 1), w, (1, din), 1.0, &mut h, dout);
    for v in &mut h {
        *v = v.max(0.0);
    }
    h
}

/// The forward pass's intermediate values, kept for the backward pass.
struct Pass {
    n: usize,
    /// Tool rows of candidate c: `offs[c]..offs[c + 1]`.
    offs: Vec<usize>,
    /// All tools, `tot x tool_dim`.
    tools: Vec<f32>,
    /// All capability vectors, `n x cap_dim`.
    caps: Vec<f32>,
    /// Per-query projections Wq q and A q (m each).
    u: Vec<f32>,
    aq: Vec<f32>,
    /// Keys and values, `tot x m`.
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention weights, `tot x heads`.
    alpha: Vec<f32>,
    /// B e per candidate, `n x m`.
    be: Vec<f32>,
    /// MLP input and post-ReLU activations.
    x: Vec<f32>,
    h1: Vec<f32>,
    h2: Vec<f32>,
    h3: Vec<f32>,
    scores: Vec<f32>,
}

impl Scorer {
    /// A scorer with seeded weights: Xavier-normal projections (Wq, Wk, Wv, A, B) and output
    /// layer (W4), He-normal hidden layers (W1..W3), zero biases and a zero skip path.
    ///
    /// Panics if the configuration is invalid (see [`ScorerConfig::validate`]).
    pub fn new(cfg: ScorerConfig) -> Scorer {
        if let Err(e) = cfg.validate() {
            panic!("{e}");
        }
        let l = Layout::of(&cfg).expect("validated");
        let mut params = vec![0f32; l.total];
        let mut rng = Rng::new(cfg.seed);
        let mut fill = |start: usize, rows: usize, cols: usize, std: f64| {
            for p in &mut params[start..start + rows * cols] {
                *p = (rng.normal() * std) as f32;
            }
        };
        let xavier = |fin: usize, fout: usize| (2.0 / (fin + fout) as f64).sqrt();
        let he = |fin: usize| (2.0 / fin as f64).sqrt();
        let (m, [h0, h1, h2]) = (l.m, cfg.hidden);
        fill(l.wq, m, cfg.query_dim, xavier(cfg.query_dim, m));
        fill(l.wk, m, cfg.tool_dim, xavier(cfg.tool_dim, m));
        fill(l.wv, m, cfg.tool_dim, xavier(cfg.tool_dim, m));
        fill(l.a, m, cfg.query_dim, xavier(cfg.query_dim, m));
        fill(l.b, m, cfg.cap_dim, xavier(cfg.cap_dim, m));
        fill(l.w1, h0, l.input, he(l.input));
        fill(l.w2, h1, h0, he(h0));
        fill(l.w3, h2, h1, he(h1));
        fill(l.w4, 1, h2, xavier(h2, 1));
        Scorer { cfg, params }
    }

    /// The skip path's weights (one per feature): `w_skip . f` adds to every score.
    pub fn skip_weights_mut(&mut self) -> &mut [f32] {
        let l = self.layout();
        &mut self.params[l.wskip..l.wskip + self.cfg.n_features]
    }

    /// Number of parameters (the length of [`Scorer::params`] and of a gradient).
    pub fn n_params(&self) -> usize {
        self.layout().total
    }

    fn layout(&self) -> Layout {
        Layout::of(&self.cfg).expect("a scorer's config is valid")
    }

    /// The scores of the candidates for one intent (forward pass only).
    ///
    /// Panics if an input has the wrong length.
    pub fn scores(&self, query: &[f32], cands: &[Candidate]) -> Vec<f32> {
        if cands.is_empty() {
            return Vec::new();
        }
        self.forward(query, cands).scores
    }

    /// Forward and backward pass for one intent: computes the scores, calls `d_loss` with them
    /// to get d(loss)/d(score_i) (one value per candidate), adds d(loss)/d(params) into `grad`
    /// (length [`Scorer::n_params`]) and returns the scores. With no candidates, returns an
    /// empty vector without calling `d_loss`.
    ///
    /// Single-threaded: callers parallelise over queries (a `Scorer` is `Sync`), each thread
    /// with its own gradient buffer.
    pub fn forward_backward(
        &self,
        query: &[f32],
        cands: &[Candidate],
        d_loss: &mut dyn FnMut(&[f32]) -> Vec<f32>,
        grad: &mut [f32],
    ) -> Vec<f32> {
        let l = self.layout();
        assert_eq!(grad.len(), l.total, "gradient length must be n_params");
        if cands.is_empty() {
            return Vec::new();
        }
        let pass = self.forward(query, cands);
        let d = d_loss(&pass.scores);
        assert_eq!(
            d.len(),
            pass.n,
            "d_loss must return one value per candidate"
        );
        self.backward(&l, query, &pass, &d, grad);
        pass.scores
    }

    fn forward(&self, query: &[f32], cands: &[Candidate]) -> Pass {
        let c = &self.cfg;
        let l = self.layout();
        let p = &self.params;
        assert_eq!(query.len(), c.query_dim, "query length must be query_dim");
        let (n, m, hd, heads, td) = (cands.len(), l.m, c.head_dim, c.heads, c.tool_dim);
        let nf = c.n_features;

        let mut offs = Vec::with_capacity(n + 1);
        offs.push(0usize);
        for cand in cands {
            assert_eq!(cand.cap.len(), c.cap_dim, "cap length must be cap_dim");
            assert_eq!(
                cand.features.len(),
                nf,
                "features length must be n_features"
            );
            assert!(
                cand.tools.len().is_multiple_of(td),
                "tools length must be a multiple of tool_dim"
            );
            offs.push(offs.last().unwrap() + cand.tools.len() / td);
        }
        let tot = offs[n];
        let mut tools = Vec::with_capacity(tot * td);
        let mut caps = Vec::with_capacity(n * c.cap_dim);
        for cand in cands {
            tools.extend_from_slice(cand.tools);
            caps.extend_from_slice(cand.cap);
        }

        // per-query projections
        let qd = c.query_dim;
        let u: Vec<f32> = (0..m)
            .map(|i| dot(&p[l.wq + i * qd..l.wq + (i + 1) * qd], query))
            .collect();
        let aq: Vec<f32> = (0..m)
            .map(|i| dot(&p[l.a + i * qd..l.a + (i + 1) * qd], query))
            .collect();

        // keys and values of every tool, B e of every candidate
        let mut k = vec![0f32; tot * m];
        let mut v = vec![0f32; tot * m];
        gemm(
            tot,
            td,
            m,
            &tools,
            (td, 1),
            &p[l.wk..l.wv],
            (1, td),
            0.0,
            &mut k,
            m,
        );
        gemm(
            tot,
            td,
            m,
            &tools,
            (td, 1),
            &p[l.wv..l.a],
            (1, td),
            0.0,
            &mut v,
            m,
        );
        let cd = c.cap_dim;
        let mut be = vec![0f32; n * m];
        gemm(
            n,
            cd,
            m,
            &caps,
            (cd, 1),
            &p[l.b..l.w1],
            (1, cd),
            0.0,
            &mut be,
            m,
        );

        // attention and the MLP input
        let scale = 1.0 / (hd as f32).sqrt();
        let mut alpha = vec![0f32; tot * heads];
        let mut x = vec![0f32; n * l.input];
        for (ci, cand) in cands.iter().enumerate() {
            let xr = &mut x[ci * l.input..(ci + 1) * l.input];
            for h in 0..heads {
                let uh = &u[h * hd..(h + 1) * hd];
                let (j0, j1) = (offs[ci], offs[ci + 1]);
                if j0 == j1 {
                    continue;
                }
                let mut mx = f32::NEG_INFINITY;
                for j in j0..j1 {
                    let s = dot(uh, &k[j * m + h * hd..j * m + (h + 1) * hd]) * scale;
                    alpha[j * heads + h] = s;
                    mx = mx.max(s);
                }
                let mut sum = 0f32;
                for j in j0..j1 {
                    let e = (alpha[j * heads + h] - mx).exp();
                    alpha[j * heads + h] = e;
                    sum += e;
                }
                let z = &mut xr[h * hd..(h + 1) * hd];
                for j in j0..j1 {
                    let a = alpha[j * heads + h] / sum;
                    alpha[j * heads + h] = a;
                    for (zi, vi) in z.iter_mut().zip(&v[j * m + h * hd..j * m + (h + 1) * hd]) {
                        *zi += a * vi;
                    }
                }
            }
            for i in 0..m {
                xr[m + i] = aq[i] * be[ci * m + i];
            }
            xr[2 * m..].copy_from_slice(cand.features);
        }

        let [h0, h1n, h2n] = c.hidden;
        let h1 = dense_relu(&x, n, l.input, &p[l.w1..l.b1], &p[l.b1..l.b1 + h0]);
        let h2 = dense_relu(&h1, n, h0, &p[l.w2..l.b2], &p[l.b2..l.b2 + h1n]);
        let h3 = dense_relu(&h2, n, h1n, &p[l.w3..l.b3], &p[l.b3..l.b3 + h2n]);
        let w4 = &p[l.w4..l.w4 + h2n];
        let wskip = &p[l.wskip..l.wskip + nf];
        let (b4, bskip) = (p[l.b4], p[l.bskip]);
        let scores = (0..n)
            .map(|ci| {
                dot(&h3[ci * h2n..(ci + 1) * h2n], w4) + b4 + dot(cands[ci].features, wskip) + bskip
            })
            .collect();
        Pass {
            n,
            offs,
            tools,
            caps,
            u,
            aq,
            k,
            v,
            alpha,
            be,
            x,
            h1,
            h2,
            h3,
            scores,
        }
    }

    fn backward(&self, l: &Layout, query: &[f32], ps: &Pass, d: &[f32], grad: &mut [f32]) {
        let c = &self.cfg;
        let p = &self.params;
        let (n, m, hd, heads, td, nf) = (ps.n, l.m, c.head_dim, c.heads, c.tool_dim, c.n_features);
        let [h0, h1n, h2n] = c.hidden;
        let input = l.input;

        // output layer and skip path
        let w4 = &p[l.w4..l.w4 + h2n];
        let mut dz3 = vec![0f32; n * h2n];
        for ci in 0..n {
            let dc = d[ci];
            grad[l.b4] += dc;
            grad[l.bskip] += dc;
            let fr = &ps.x[ci * input + 2 * m..(ci + 1) * input];
            for (g, f) in grad[l.wskip..l.wskip + nf].iter_mut().zip(fr) {
                *g += dc * f;
            }
            let hr = &ps.h3[ci * h2n..(ci + 1) * h2n];
            let dr = &mut dz3[ci * h2n..(ci + 1) * h2n];
            for i in 0..h2n {
                grad[l.w4 + i] += dc * hr[i];
                dr[i] = if hr[i] > 0.0 { dc * w4[i] } else { 0.0 };
            }
        }

        // hidden layers: dW += dZ^T H_prev, db += colsum dZ, dH_prev = dZ W (masked)
        let dz2 = back_dense(
            n,
            h2n,
            h1n,
            &dz3,
            &ps.h2,
            &p[l.w3..l.b3],
            grad,
            l.w3,
            l.b3,
            true,
        );
        let dz1 = back_dense(
            n,
            h1n,
            h0,
            &dz2,
            &ps.h1,
            &p[l.w2..l.b2],
            grad,
            l.w2,
            l.b2,
            true,
        );
        // first layer: its input gradient is needed for the z and g columns only
        gemm(
            h0,
            n,
            input,
            &dz1,
            (1, h0),
            &ps.x,
            (input, 1),
            1.0,
            &mut grad[l.w1..l.b1],
            input,
        );
        col_sum_into(&dz1, n, h0, &mut grad[l.b1..l.b1 + h0]);
        let m2 = 2 * m;
        let mut dx = vec![0f32; n * m2];
        gemm(
            n,
            h0,
            m2,
            &dz1,
            (h0, 1),
            &p[l.w1..l.b1],
            (input, 1),
            0.0,
            &mut dx,
            m2,
        );

        // interaction: g = aq ⊙ be
        let mut daq = vec![0f32; m];
        let mut dbe = vec![0f32; n * m];
        for ci in 0..n {
            for i in 0..m {
                let dg = dx[ci * m2 + m + i];
                daq[i] += dg * ps.be[ci * m + i];
                dbe[ci * m + i] = dg * ps.aq[i];
            }
        }
        let qd = c.query_dim;
        for i in 0..m {
            let row = &mut grad[l.a + i * qd..l.a + (i + 1) * qd];
            for (g, q) in row.iter_mut().zip(query) {
                *g += daq[i] * q;
            }
        }
        let cd = c.cap_dim;
        gemm(
            m,
            n,
            cd,
            &dbe,
            (1, m),
            &ps.caps,
            (cd, 1),
            1.0,
            &mut grad[l.b..l.w1],
            cd,
        );

        // attention
        let tot = ps.offs[n];
        let scale = 1.0 / (hd as f32).sqrt();
        let mut du = vec![0f32; m];
        let mut dk = vec![0f32; tot * m];
        let mut dv = vec![0f32; tot * m];
        let mut dalpha = vec![0f32; ps.offs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)];
        for ci in 0..n {
            let (j0, j1) = (ps.offs[ci], ps.offs[ci + 1]);
            for h in 0..heads {
                let r = h * hd..(h + 1) * hd;
                let dz = &dx[ci * m2 + h * hd..ci * m2 + (h + 1) * hd];
                let mut sbar = 0f32;
                for j in j0..j1 {
                    let a = ps.alpha[j * heads + h];
                    let da = dot(dz, &ps.v[j * m + r.start..j * m + r.end]);
                    dalpha[j - j0] = da;
                    sbar += a * da;
                    for (g, z) in dv[j * m + r.start..j * m + r.end].iter_mut().zip(dz) {
                        *g += a * z;
                    }
                }
                for j in j0..j1 {
                    let ds = ps.alpha[j * heads + h] * (dalpha[j - j0] - sbar) * scale;
                    let kr = &ps.k[j * m + r.start..j * m + r.end];
                    for (g, kv) in du[r.clone()].iter_mut().zip(kr) {
                        *g += ds * kv;
                    }
                    for (g, uv) in dk[j * m + r.start..j * m + r.end]
                        .iter_mut()
                        .zip(&ps.u[r.clone()])
                    {
                        *g += ds * uv;
                    }
                }
            }
        }
        for i in 0..m {
            let row = &mut grad[l.wq + i * qd..l.wq + (i + 1) * qd];
            for (g, q) in row.iter_mut().zip(query) {
                *g += du[i] * q;
            }
        }
        gemm(
            m,
            tot,
            td,
            &dk,
            (1, m),
            &ps.tools,
            (td, 1),
            1.0,
            &mut grad[l.wk..l.wv],
            td,
        );
        gemm(
            m,
            tot,
            td,
            &dv,
            (1, m),
            &ps.tools,
            (td, 1),
            1.0,
            &mut grad[l.wv..l.a],
            td,
        );
    }

    /// Serialises the scorer: the magic `GNSCORER`, a little-endian u32 format version (1), a
    /// u32 length and the configuration as JSON, a u64 parameter count, then the parameters as
    /// little-endian f32.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.cfg).expect("config serialises");
        let mut out = Vec::with_capacity(24 + header.len() + 4 * self.params.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&(self.params.len() as u64).to_le_bytes());
        for v in &self.params {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Reads what [`Scorer::to_bytes`] wrote; rejects a wrong magic or version, an invalid
    /// configuration, a parameter count that does not match it, a wrong total length and
    /// non-finite parameters.
    pub fn from_bytes(b: &[u8]) -> Result<Scorer, String> {
        let mut r = Reader { b, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err("scorer bytes: bad magic".into());
        }
        let version = u32::from_le_bytes(r.take(4)?.try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(format!("scorer bytes: unsupported version {version}"));
        }
        let hl = u32::from_le_bytes(r.take(4)?.try_into().unwrap()) as usize;
        let cfg: ScorerConfig = serde_json::from_slice(r.take(hl)?)
            .map_err(|e| format!("scorer bytes: bad config header: {e}"))?;
        cfg.validate()?;
        let expected = Layout::of(&cfg).expect("validated").total;
        let np = u64::from_le_bytes(r.take(8)?.try_into().unwrap());
        if np != expected as u64 {
            return Err(format!(
                "scorer bytes: {np} parameters, the config needs {expected}"
            ));
        }
        if r.b.len() - r.at != expected * 4 {
            return Err(format!(
                "scorer bytes: {} bytes of parameters, expected {}",
                r.b.len() - r.at,
                expected * 4
            ));
        }
        let params: Vec<f32> = r.b[r.at..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if let Some(i) = params.iter().position(|v| !v.is_finite()) {
            return Err(format!("scorer bytes: parameter {i} is not finite"));
        }
        Ok(Scorer { cfg, params })
    }
}

const MAGIC: &[u8; 8] = b"GNSCORER";
const FORMAT_VERSION: u32 = 1;

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() - self.at < n {
            return Err("scorer bytes: truncated".into());
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
}

/// Adds the column sums of an `n x cols` matrix into `out`.
fn col_sum_into(dz: &[f32], n: usize, cols: usize, out: &mut [f32]) {
    for r in 0..n {
        for (o, v) in out.iter_mut().zip(&dz[r * cols..(r + 1) * cols]) {
            *o += v;
        }
    }
}

/// Backward through `h = relu(h_prev W^T + b)` (W: dout x din at `grad[wo..]`, b at `grad[bo..]`)
/// given dZ (the gradient at the pre-activation, `n x dout`): accumulates dW and db and returns
/// the gradient at the previous layer's pre-activation (`n x din`, masked by `h_prev > 0`).
#[allow(clippy::too_many_arguments)]
fn back_dense(
    n: usize,
    dout: usize,
    din: usize,
    dz: &[f32],
    h_prev: &[f32],
    w: &[f32],
    grad: &mut [f32],
    wo: usize,
    bo: usize,
    mask: bool,
) -> Vec<f32> {
    gemm(
        dout,
        n,
        din,
        dz,
        (1, dout),
        h_prev,
        (din, 1),
        1.0,
        &mut grad[wo..bo],
        din,
    );
    col_sum_into(dz, n, dout, &mut grad[bo..bo + dout]);
    let mut dh = vec![0f32; n * din];
    gemm(n, dout, din, dz, (dout, 1), w, (din, 1), 0.0, &mut dh, din);
    if mask {
        for (g, h) in dh.iter_mut().zip(h_prev) {
            if *h <= 0.0 {
                *g = 0.0;
            }
        }
    }
    dh
}

/// Adam with decoupled weight decay (AdamW) and bias correction.
#[derive(Clone, Debug)]
pub struct Adam {
    /// Base learning rate (kept for the caller's schedule; [`Adam::step`] uses the rate it is
    /// given).
    pub lr: f32,
    /// Decay of the first moment (0.9).
    pub beta1: f32,
    /// Decay of the second moment (0.999).
    pub beta2: f32,
    /// Added to the root of the second moment (1e-8).
    pub eps: f32,
    /// Decoupled weight decay: each step also subtracts `lr * weight_decay * param` (0).
    pub weight_decay: f32,
    m: Vec<f32>,
    v: Vec<f32>,
    t: u64,
}

impl Adam {
    /// Adam for `n_params` parameters with base rate `lr` and the default betas, eps 1e-8 and
    /// no weight decay.
    pub fn new(n_params: usize, lr: f32) -> Adam {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            m: vec![0.0; n_params],
            v: vec![0.0; n_params],
            t: 0,
        }
    }

    /// One update of `params` from `grad` with learning rate `lr`.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f32) {
        assert_eq!(params.len(), self.m.len(), "Adam: parameter count changed");
        assert_eq!(grad.len(), self.m.len(), "Adam: gradient length");
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - (b1 as f64).powf(self.t as f64);
        let bc2 = 1.0 - (b2 as f64).powf(self.t as f64);
        let step = (lr as f64 / bc1) as f32;
        let root_bc2 = bc2.sqrt() as f32;
        let decay = lr * self.weight_decay;
        for (((p, g), m), v) in params
            .iter_mut()
            .zip(grad)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= step * *m / (v.sqrt() / root_bc2 + self.eps) + decay * *p;
        }
    }
}

/// Cosine annealing from base to min over total steps.
///
/// `base` at step 0, `min` at step `total` and after; `min` when `total` is 0.
pub fn cosine_lr(base: f32, min: f32, step: usize, total: usize) -> f32 {
    if total == 0 || step >= total {
        return min;
    }
    let frac = step as f64 / total as f64;
    (min as f64 + 0.5 * (base - min) as f64 * (1.0 + (std::f64::consts::PI * frac).cos())) as f32
}

/// Listwise loss used for training, on one query's candidate scores: the experience's chosen
/// candidate index, its target y in [0,1] (TD target; 1 = success), and its importance weight w.
/// p = softmax(scores)[chosen]; loss = w * ( -y ln p - (1-y) ln(1-p) ) with p clamped to
/// [1e-7, 1-1e-7]. Returns (loss, d loss / d scores, p).
///
/// The gradient is the exact derivative of the unclamped loss (the clamp only keeps the loss
/// finite): `w (p - y)` on the chosen score and `w p_k (y - (1-y) p / (1-p))` on the others,
/// computed in f64 from log-sum-exps so that it stays finite when p is near 0 or 1. With a
/// single candidate p is 1 whatever the score, and the gradient is 0.
pub fn listwise_loss(scores: &[f32], chosen: usize, y: f32, w: f32) -> (f32, Vec<f32>, f32) {
    let n = scores.len();
    assert!(chosen < n, "listwise_loss: chosen index out of range");
    let (y, w) = (y as f64, w as f64);
    let lse = |skip: Option<usize>| -> f64 {
        let it = || {
            scores
                .iter()
                .enumerate()
                .filter(move |(i, _)| Some(*i) != skip)
                .map(|(_, s)| *s as f64)
        };
        let mx = it().fold(f64::NEG_INFINITY, f64::max);
        if mx == f64::NEG_INFINITY {
            return mx;
        }
        mx + it().map(|s| (s - mx).exp()).sum::<f64>().ln()
    };
    let all = lse(None);
    let sc = scores[chosen] as f64;
    let p = (sc - all).exp();
    let pc = p.clamp(1e-7, 1.0 - 1e-7);
    let loss = w * (-y * pc.ln() - (1.0 - y) * (1.0 - pc).ln());
    let mut grad = vec![0f32; n];
    if n > 1 {
        // p_k / (1 - p) = exp(s_k - lse_others) <= 1, so p_k p / (1 - p) = p r_k stays finite
        let others = lse(Some(chosen));
        for (k, g) in grad.iter_mut().enumerate() {
            *g = if k == chosen {
                w * (p - y)
            } else {
                let s = scores[k] as f64;
                let pk = (s - all).exp();
                let rk = (s - others).exp();
                w * (y * pk - (1.0 - y) * p * rk)
            } as f32;
        }
    }
    (loss as f32, grad, p as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_cfg(seed: u64) -> ScorerConfig {
        ScorerConfig {
            query_dim: 6,
            tool_dim: 4,
            cap_dim: 5,
            n_features: 3,
            heads: 2,
            head_dim: 3,
            hidden: [8, 6, 4],
            seed,
        }
    }

    fn randv(rng: &mut Rng, n: usize, s: f64) -> Vec<f32> {
        (0..n).map(|_| (rng.normal() * s) as f32).collect()
    }

    struct Inputs {
        query: Vec<f32>,
        tools: Vec<Vec<f32>>,
        caps: Vec<Vec<f32>>,
        feats: Vec<Vec<f32>>,
    }

    impl Inputs {
        fn random(cfg: &ScorerConfig, n_tools: &[usize], rng: &mut Rng) -> Inputs {
            Inputs {
                query: randv(rng, cfg.query_dim, 1.0),
                tools: n_tools
                    .iter()
                    .map(|&t| randv(rng, t * cfg.tool_dim, 1.0))
                    .collect(),
                caps: n_tools
                    .iter()
                    .map(|_| randv(rng, cfg.cap_dim, 1.0))
                    .collect(),
                feats: n_tools
                    .iter()
                    .map(|_| randv(rng, cfg.n_features, 1.0))
                    .collect(),
            }
        }
        fn cands(&self) -> Vec<Candidate<'_>> {
            (0..self.caps.len())
                .map(|i| Candidate {
                    tools: &self.tools[i],
                    cap: &self.caps[i],
                    features: &self.feats[i],
                })
                .collect()
        }
    }

    /// Plain-loop f64 forward pass, independent of the sgemm path; also counts active ReLUs.
    fn ref_scores(
        s: &Scorer,
        p: &[f64],
        q: &[f32],
        cands: &[Candidate],
    ) -> (Vec<f64>, usize, usize) {
        let c = &s.cfg;
        let l = Layout::of(c).unwrap();
        let (m, hd) = (l.m, c.head_dim);
        let mv = |off: usize, rows: usize, cols: usize, x: &[f64]| -> Vec<f64> {
            (0..rows)
                .map(|r| (0..cols).map(|k| p[off + r * cols + k] * x[k]).sum())
                .collect()
        };
        let qf: Vec<f64> = q.iter().map(|v| *v as f64).collect();
        let u = mv(l.wq, m, c.query_dim, &qf);
        let aq = mv(l.a, m, c.query_dim, &qf);
        let (mut active, mut units) = (0, 0);
        let mut out = Vec::new();
        for cand in cands {
            let nt = cand.tools.len() / c.tool_dim;
            let mut x = vec![0f64; l.input];
            for h in 0..c.heads {
                let mut ks = Vec::new();
                let mut vs = Vec::new();
                for j in 0..nt {
                    let t: Vec<f64> = cand.tools[j * c.tool_dim..(j + 1) * c.tool_dim]
                        .iter()
                        .map(|v| *v as f64)
                        .collect();
                    let k = mv(l.wk, m, c.tool_dim, &t);
                    let v = mv(l.wv, m, c.tool_dim, &t);
                    let logit: f64 = (0..hd).map(|i| u[h * hd + i] * k[h * hd + i]).sum::<f64>()
                        / (hd as f64).sqrt();
                    ks.push(logit);
                    vs.push(v[h * hd..(h + 1) * hd].to_vec());
                }
                if nt == 0 {
                    continue;
                }
                let mx = ks.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let den: f64 = ks.iter().map(|s| (s - mx).exp()).sum();
                for j in 0..nt {
                    let a = (ks[j] - mx).exp() / den;
                    for i in 0..hd {
                        x[h * hd + i] += a * vs[j][i];
                    }
                }
            }
            let e: Vec<f64> = cand.cap.iter().map(|v| *v as f64).collect();
            let be = mv(l.b, m, c.cap_dim, &e);
            for i in 0..m {
                x[m + i] = aq[i] * be[i];
            }
            for (i, f) in cand.features.iter().enumerate() {
                x[2 * m + i] = *f as f64;
            }
            let mut h = x;
            let layers = [
                (l.w1, l.b1, c.hidden[0]),
                (l.w2, l.b2, c.hidden[1]),
                (l.w3, l.b3, c.hidden[2]),
            ];
            for (w, b, dout) in layers {
                let z = mv(w, dout, h.len(), &h);
                h = z
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v + p[b + i]).max(0.0))
                    .collect();
                units += dout;
                active += h.iter().filter(|v| **v > 0.0).count();
            }
            let mut sc: f64 = (0..c.hidden[2]).map(|i| h[i] * p[l.w4 + i]).sum::<f64>() + p[l.b4];
            sc += cand
                .features
                .iter()
                .enumerate()
                .map(|(i, f)| *f as f64 * p[l.wskip + i])
                .sum::<f64>()
                + p[l.bskip];
            out.push(sc);
        }
        (out, active, units)
    }

    fn loss64(scores: &[f64], chosen: usize, y: f64, w: f64) -> f64 {
        let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let den: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
        let p = (scores[chosen] - mx).exp() / den;
        w * (-y * p.ln() - (1.0 - y) * (1.0 - p).ln())
    }

    fn rel_err(a: f64, n: f64) -> f64 {
        (a - n).abs() / (1e-3f64).max(a.abs() + n.abs())
    }

    #[test]
    fn gradient_check_every_parameter() {
        let cfg = small_cfg(11);
        let mut s = Scorer::new(cfg.clone());
        let mut rng = Rng::new(5);
        for v in &mut s.params {
            *v = (rng.normal() * 0.6) as f32;
        }
        let inp = Inputs::random(&cfg, &[0, 1, 2, 3], &mut rng);
        let cands = inp.cands();
        let p64: Vec<f64> = s.params.iter().map(|v| *v as f64).collect();
        let (ref_sc, active, units) = ref_scores(&s, &p64, &inp.query, &cands);
        let frac = active as f64 / units as f64;
        assert!((0.2..=0.8).contains(&frac), "ReLUs not mixed: {frac}");
        let sc = s.scores(&inp.query, &cands);
        for (a, b) in sc.iter().zip(&ref_sc) {
            assert!((*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }

        // two losses: the listwise loss, and a linear one (which also reaches b4 and b_skip)
        let lin: Vec<f64> = (0..4).map(|_| rng.normal()).collect();
        let mut worst = 0f64;
        for case in 0..2 {
            let (chosen, y, w) = (2usize, 0.3f32, 0.8f32);
            let mut grad = vec![0f32; s.n_params()];
            let lin32: Vec<f32> = lin.iter().map(|v| *v as f32).collect();
            let mut dl = |sc: &[f32]| -> Vec<f32> {
                if case == 0 {
                    let (_, g, p) = listwise_loss(sc, chosen, y, w);
                    assert!(p > 1e-4 && p < 1.0 - 1e-4, "p at the clamp: {p}");
                    g
                } else {
                    lin32.clone()
                }
            };
            let got = s.forward_backward(&inp.query, &cands, &mut dl, &mut grad);
            assert_eq!(got, sc);
            let f = |p: &[f64]| -> f64 {
                let (sc, _, _) = ref_scores(&s, p, &inp.query, &cands);
                if case == 0 {
                    loss64(&sc, chosen, y as f64, w as f64)
                } else {
                    sc.iter().zip(&lin).map(|(a, b)| a * b).sum()
                }
            };
            let mut p = p64.clone();
            let h = 1e-6;
            let mut nonzero = 0;
            for i in 0..p.len() {
                let orig = p[i];
                p[i] = orig + h;
                let up = f(&p);
                p[i] = orig - h;
                let dn = f(&p);
                p[i] = orig;
                let num = (up - dn) / (2.0 * h);
                let e = rel_err(grad[i] as f64, num);
                assert!(
                    e < 1e-2,
                    "case {case} param {i}: analytic {} numeric {num}",
                    grad[i]
                );
                worst = worst.max(e);
                if num.abs() > 1e-6 {
                    nonzero += 1;
                }
            }
            // the check is not vacuous: most parameters have a gradient
            assert!(nonzero > p.len() / 2, "case {case}: only {nonzero} nonzero");
        }
        println!(
            "gradient check: worst relative error {worst:.3e} over {} params",
            s.n_params()
        );
    }

    #[test]
    fn listwise_loss_gradient_and_values() {
        let scores = [0.3f32, -1.2, 2.0, 0.7, -0.1];
        for &y in &[1.0f32, 0.0, 0.3] {
            let w = 0.7f32;
            let (loss, g, p) = listwise_loss(&scores, 3, y, w);
            let s64: Vec<f64> = scores.iter().map(|v| *v as f64).collect();
            assert!((loss as f64 - loss64(&s64, 3, y as f64, w as f64)).abs() < 1e-5);
            let den: f64 = s64.iter().map(|s| s.exp()).sum();
            assert!((p as f64 - s64[3].exp() / den).abs() < 1e-6);
            for k in 0..scores.len() {
                let h = 1e-6;
                let mut a = s64.clone();
                a[k] += h;
                let mut b = s64.clone();
                b[k] -= h;
                let num = (loss64(&a, 3, y as f64, w as f64) - loss64(&b, 3, y as f64, w as f64))
                    / (2.0 * h);
                assert!(
                    rel_err(g[k] as f64, num) < 1e-4,
                    "y {y} k {k}: {} vs {num}",
                    g[k]
                );
            }
            // softmax shift invariance: gradients sum to zero
            assert!(g.iter().sum::<f32>().abs() < 1e-6);
        }
        // extreme scores: finite loss (clamped) and finite gradient
        let (loss, g, p) = listwise_loss(&[100.0, -100.0, -100.0], 0, 0.0, 1.0);
        assert!(loss.is_finite() && (loss - (-(1e-7f64).ln()) as f32).abs() < 1e-3);
        assert!(g.iter().all(|v| v.is_finite()) && (g[0] - 1.0).abs() < 1e-6 && p > 0.999);
        let (_, g, _) = listwise_loss(&[-100.0, 100.0], 0, 1.0, 1.0);
        assert!((g[0] + 1.0).abs() < 1e-6 && (g[1] - 1.0).abs() < 1e-6);
        // a single candidate carries no listwise information
        let (_, g, p) = listwise_loss(&[3.0], 0, 0.0, 1.0);
        assert_eq!((g, p), (vec![0.0], 1.0));
    }

    #[test]
    fn learns_a_toy_ranking_task() {
        // The right candidate is the one whose capability vector matches the query (plus noise);
        // the features are noise, so the interaction path has to learn it.
        let cfg = ScorerConfig {
            query_dim: 8,
            tool_dim: 4,
            cap_dim: 8,
            n_features: 2,
            heads: 2,
            head_dim: 4,
            hidden: [32, 16, 8],
            seed: 3,
        };
        let mut s = Scorer::new(cfg.clone());
        let mut rng = Rng::new(9);
        let n_c = 6;
        let make = |rng: &mut Rng| -> (Inputs, usize) {
            let mut inp = Inputs::random(&cfg, &[1, 0, 2, 1, 0, 1], rng);
            let right = rng.below(n_c);
            let noise = randv(rng, cfg.cap_dim, 0.3);
            inp.caps[right] = inp.query.iter().zip(&noise).map(|(q, e)| q + e).collect();
            (inp, right)
        };
        let train: Vec<(Inputs, usize)> = (0..3000).map(|_| make(&mut rng)).collect();
        let test: Vec<(Inputs, usize)> = (0..200).map(|_| make(&mut rng)).collect();
        let accuracy = |s: &Scorer| -> f64 {
            let hits = test
                .iter()
                .filter(|(inp, right)| {
                    let sc = s.scores(&inp.query, &inp.cands());
                    let best = (0..sc.len())
                        .max_by(|a, b| sc[*a].total_cmp(&sc[*b]))
                        .unwrap();
                    best == *right
                })
                .count();
            hits as f64 / test.len() as f64
        };
        let acc0 = accuracy(&s);
        let mut adam = Adam::new(s.n_params(), 3e-3);
        let (epochs, batch) = (20, 32);
        let total = epochs * train.len().div_ceil(batch);
        let mut step = 0;
        let mut epoch_loss = Vec::new();
        for _ in 0..epochs {
            let mut sum = 0f64;
            for chunk in train.chunks(batch) {
                let mut grad = vec![0f32; s.n_params()];
                for (inp, right) in chunk {
                    // the logged experience: a random candidate, labelled by correctness
                    let chosen = if rng.unit() < 0.5 {
                        *right
                    } else {
                        rng.below(n_c)
                    };
                    let y = if chosen == *right { 1.0 } else { 0.0 };
                    let mut dl = |sc: &[f32]| {
                        let (l, g, _) = listwise_loss(sc, chosen, y, 1.0 / chunk.len() as f32);
                        sum += l as f64;
                        g
                    };
                    s.forward_backward(&inp.query, &inp.cands(), &mut dl, &mut grad);
                }
                let lr = cosine_lr(adam.lr, 1e-4, step, total);
                adam.step(&mut s.params, &grad, lr);
                step += 1;
            }
            epoch_loss.push(sum / (train.len() / batch) as f64);
        }
        let acc = accuracy(&s);
        println!(
            "toy task: accuracy {acc0:.3} -> {acc:.3}, loss {:.4} -> {:.4}",
            epoch_loss[0],
            epoch_loss.last().unwrap()
        );
        assert!(acc > 0.9, "accuracy {acc}");
        assert!(*epoch_loss.last().unwrap() < 0.6 * epoch_loss[0]);
    }

    #[test]
    fn skip_path_learns_a_feature_fast() {
        // The right candidate has the largest feature 0; everything else is noise.
        let cfg = small_cfg(4);
        let mut s = Scorer::new(cfg.clone());
        let mut rng = Rng::new(21);
        let make = |rng: &mut Rng| {
            let inp = Inputs::random(&cfg, &[1, 2, 0, 1, 1], rng);
            let right = (0..5)
                .max_by(|a, b| inp.feats[*a][0].total_cmp(&inp.feats[*b][0]))
                .unwrap();
            (inp, right)
        };
        let mut adam = Adam::new(s.n_params(), 1e-2);
        let steps = 2000;
        for step in 0..steps {
            let (inp, right) = make(&mut rng);
            let mut grad = vec![0f32; s.n_params()];
            s.forward_backward(
                &inp.query,
                &inp.cands(),
                &mut |sc| listwise_loss(sc, right, 1.0, 1.0).1,
                &mut grad,
            );
            adam.step(&mut s.params, &grad, cosine_lr(1e-2, 1e-4, step, steps));
        }
        let mut hits = 0;
        for _ in 0..300 {
            let (inp, right) = make(&mut rng);
            let sc = s.scores(&inp.query, &inp.cands());
            let best = (0..5).max_by(|a, b| sc[*a].total_cmp(&sc[*b])).unwrap();
            hits += (best == right) as usize;
        }
        let acc = hits as f64 / 300.0;
        let l = Layout::of(&cfg).unwrap();
        let ws = &s.params[l.wskip..l.wskip + 3];
        println!("skip path: accuracy {acc:.3}, w_skip {ws:?}");
        assert!(acc > 0.9, "accuracy {acc}");
        assert!(ws[0] > 2.0 * ws[1].abs().max(ws[2].abs()), "w_skip {ws:?}");
    }

    #[test]
    fn bytes_round_trip_and_rejections() {
        let cfg = small_cfg(8);
        let s = Scorer::new(cfg.clone());
        let mut rng = Rng::new(2);
        let inp = Inputs::random(&cfg, &[2, 0, 1], &mut rng);
        let b = s.to_bytes();
        let t = Scorer::from_bytes(&b).unwrap();
        assert_eq!(t.cfg, s.cfg);
        assert_eq!(t.params, s.params);
        assert_eq!(
            t.scores(&inp.query, &inp.cands()),
            s.scores(&inp.query, &inp.cands())
        );

        for cut in [0, 4, 8, 12, 16, 30, b.len() - 4, b.len() - 1] {
            assert!(Scorer::from_bytes(&b[..cut]).is_err(), "cut {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(Scorer::from_bytes(&longer).is_err());
        let garbage: Vec<u8> = (0..b.len()).map(|_| rng.next_u64() as u8).collect();
        assert!(Scorer::from_bytes(&garbage).is_err());
        let mut bad_magic = b.clone();
        bad_magic[0] ^= 1;
        assert!(Scorer::from_bytes(&bad_magic).is_err());
        let mut bad_version = b.clone();
        bad_version[8] = 2;
        assert!(Scorer::from_bytes(&bad_version).is_err());
        let mut garbage_tail = b.clone();
        for v in &mut garbage_tail[20..] {
            *v = rng.next_u64() as u8;
        }
        assert!(Scorer::from_bytes(&garbage_tail).is_err());
        for bad in [f32::NAN, f32::INFINITY] {
            let mut nan = b.clone();
            let at = nan.len() - 4 * 7;
            nan[at..at + 4].copy_from_slice(&bad.to_le_bytes());
            assert!(Scorer::from_bytes(&nan).unwrap_err().contains("not finite"));
        }
        // a valid header whose parameter count does not match
        let mut other = s.clone();
        other.cfg.hidden[2] = 5;
        let mut mixed = other.to_bytes();
        mixed.truncate(mixed.len() - 4 * other.params.len());
        mixed.extend(b[b.len() - 4 * s.params.len()..].iter());
        assert!(Scorer::from_bytes(&mixed).is_err());
        // an invalid config
        let mut zero = s.clone();
        zero.cfg.heads = 0;
        assert!(Scorer::from_bytes(&zero.to_bytes()).is_err());
    }

    #[test]
    fn scores_equal_forward_backward_and_init_is_seeded() {
        let cfg = small_cfg(1);
        let s = Scorer::new(cfg.clone());
        assert_eq!(s.params, Scorer::new(cfg.clone()).params);
        assert_ne!(s.params, Scorer::new(small_cfg(2)).params);
        assert_eq!(s.n_params(), s.params.len());
        // biases and the skip path start at 0, weights do not
        let l = Layout::of(&cfg).unwrap();
        assert!(s.params[l.b1..l.w2].iter().all(|v| *v == 0.0));
        assert!(s.params[l.wskip..].iter().all(|v| *v == 0.0));
        assert!(s.params[l.w1..l.b1].iter().all(|v| *v != 0.0));
        let mut rng = Rng::new(3);
        let inp = Inputs::random(&cfg, &[3, 1, 0, 2, 2], &mut rng);
        let cands = inp.cands();
        let sc = s.scores(&inp.query, &cands);
        assert_eq!(sc.len(), 5);
        let mut grad = vec![0f32; s.n_params()];
        let mut seen = Vec::new();
        let fb = s.forward_backward(
            &inp.query,
            &cands,
            &mut |x| {
                seen = x.to_vec();
                vec![1.0; x.len()]
            },
            &mut grad,
        );
        assert_eq!(fb, sc);
        assert_eq!(seen, sc);
        // d(sum of scores)/d(b_skip) = number of candidates; gradients accumulate
        assert_eq!(grad[l.bskip], 5.0);
        s.forward_backward(&inp.query, &cands, &mut |x| vec![1.0; x.len()], &mut grad);
        assert_eq!(grad[l.bskip], 10.0);
        // scores do not depend on the other candidates
        let one = s.scores(&inp.query, &cands[1..2]);
        assert!((one[0] - sc[1]).abs() < 1e-5);
        assert!(s.scores(&inp.query, &[]).is_empty());
    }

    #[test]
    fn cosine_lr_endpoints() {
        assert_eq!(cosine_lr(1e-3, 1e-5, 0, 100), 1e-3);
        assert_eq!(cosine_lr(1e-3, 1e-5, 100, 100), 1e-5);
        assert_eq!(cosine_lr(1e-3, 1e-5, 500, 100), 1e-5);
        assert!((cosine_lr(1e-3, 1e-5, 50, 100) - 0.505e-3).abs() < 1e-8);
        let lrs: Vec<f32> = (0..=100).map(|s| cosine_lr(1.0, 0.0, s, 100)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
        assert_eq!(cosine_lr(1.0, 0.1, 0, 0), 0.1);
    }

    #[test]
    fn adam_matches_hand_computed_step_and_decays() {
        let mut adam = Adam::new(2, 0.1);
        let mut p = [1.0f32, -2.0];
        adam.step(&mut p, &[0.5, -4.0], 0.1);
        // first step: m_hat = g, v_hat = g^2, update = lr * sign(g)
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] + 1.9).abs() < 1e-6,
            "{p:?}"
        );
        let mut adam = Adam::new(1, 0.1);
        adam.weight_decay = 0.5;
        let mut p = [2.0f32];
        adam.step(&mut p, &[0.0], 0.1);
        assert!((p[0] - (2.0 - 0.1 * 0.5 * 2.0)).abs() < 1e-6);
    }

    #[test]
    fn timing_forward_backward_50_candidates() {
        let cfg = ScorerConfig {
            query_dim: 384,
            tool_dim: 64,
            cap_dim: 448,
            n_features: 12,
            heads: 4,
            head_dim: 16,
            hidden: [256, 128, 64],
            seed: 1,
        };
        let s = Scorer::new(cfg.clone());
        let mut rng = Rng::new(4);
        let inp = Inputs::random(&cfg, &[2; 50], &mut rng);
        let cands = inp.cands();
        let mut grad = vec![0f32; s.n_params()];
        let reps = if cfg!(debug_assertions) { 2 } else { 200 };
        let mut dl = |sc: &[f32]| listwise_loss(sc, 7, 1.0, 1.0).1;
        s.forward_backward(&inp.query, &cands, &mut dl, &mut grad);
        let t = std::time::Instant::now();
        for _ in 0..reps {
            s.forward_backward(&inp.query, &cands, &mut dl, &mut grad);
        }
        let fb = t.elapsed().as_secs_f64() / reps as f64;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            std::hint::black_box(s.scores(&inp.query, &cands));
        }
        let fwd = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "forward_backward, 50 candidates x 2 tools, {} params: {:.3} ms (forward only {:.3} ms)",
            s.n_params(),
            fb * 1e3,
            fwd * 1e3
        );
        assert!(grad.iter().all(|v| v.is_finite()));
        assert!(grad.iter().any(|v| *v != 0.0));
    }
}
