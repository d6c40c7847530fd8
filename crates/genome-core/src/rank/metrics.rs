//! Ranking and calibration metrics, temperature scaling, drift statistics and the canary's
//! two-proportion test, all in f64.
//!
//! - Ranking: MRR, Hit@k, NDCG@10 and MAP for one relevant item per query
//!   ([`ranking_metrics`]), average precision for several ([`average_precision`]), catalogue
//!   coverage and the Gini coefficient of how often items are recommended.
//! - Calibration: expected calibration error, Brier score, temperature scaling.
//! - Drift: two-sample Kolmogorov-Smirnov with scipy's asymptotic p-value, population stability
//!   index.
//! - Canary: pooled two-proportion z-test with a Wald interval and the sample size needed.

use serde::{Deserialize, Serialize};

/// Ranking quality over queries with one relevant item each, from the 1-based rank of that item
/// per query (None = not ranked, counting as 0 for MRR/Hit/NDCG); see [`ranking_metrics`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankingMetrics {
    /// Number of queries.
    pub n: usize,
    /// Mean reciprocal rank.
    pub mrr: f64,
    /// Share of queries whose relevant item is ranked first.
    pub hit_at_1: f64,
    /// Share of queries whose relevant item is in the top 3.
    pub hit_at_3: f64,
    /// Share of queries whose relevant item is in the top 5.
    pub hit_at_5: f64,
    /// Share of queries whose relevant item is in the top 10.
    pub hit_at_10: f64,
    /// Mean NDCG@10 (one relevant item: 1/log2(rank + 1) within the top 10, else 0).
    pub ndcg_at_10: f64,
    /// Mean average precision; with one relevant item per query it equals the MRR.
    pub map: f64,
}

/// Ranking metrics for queries with a single relevant item each, given its 1-based rank per
/// query (None, or a rank of 0, = not ranked: it scores 0 everywhere). All zero for no queries.
/// MAP with one relevant item is the reciprocal rank; NDCG@10 = 1/log2(rank + 1) if
/// rank <= 10, else 0 (the ideal DCG is 1).
pub fn ranking_metrics(ranks: &[Option<usize>]) -> RankingMetrics {
    let n = ranks.len();
    let mut m = RankingMetrics {
        n,
        mrr: 0.0,
        hit_at_1: 0.0,
        hit_at_3: 0.0,
        hit_at_5: 0.0,
        hit_at_10: 0.0,
        ndcg_at_10: 0.0,
        map: 0.0,
    };
    if n == 0 {
        return m;
    }
    for r in ranks.iter().filter_map(|r| r.filter(|&r| r >= 1)) {
        let rf = r as f64;
        m.mrr += 1.0 / rf;
        m.hit_at_1 += f64::from(u8::from(r <= 1));
        m.hit_at_3 += f64::from(u8::from(r <= 3));
        m.hit_at_5 += f64::from(u8::from(r <= 5));
        m.hit_at_10 += f64::from(u8::from(r <= 10));
        if r <= 10 {
            m.ndcg_at_10 += 1.0 / (rf + 1.0).log2();
        }
    }
    let nf = n as f64;
    for v in [
        &mut m.mrr,
        &mut m.hit_at_1,
        &mut m.hit_at_3,
        &mut m.hit_at_5,
        &mut m.hit_at_10,
        &mut m.ndcg_at_10,
    ] {
        *v /= nf;
    }
    m.map = m.mrr;
    m
}

/// Average precision of one ranked list with several relevant items, given their 1-based
/// ranks (in any order): the mean over relevant items of the precision at its rank,
/// `(number of relevant items at or above it) / rank`. The denominator is the number of
/// relevant items given (distinct ranks; a rank of 0 is ignored). 0 for none.
pub fn average_precision(relevant_ranks: &[usize]) -> f64 {
    let mut r: Vec<usize> = relevant_ranks.iter().copied().filter(|&r| r >= 1).collect();
    r.sort_unstable();
    r.dedup();
    if r.is_empty() {
        return 0.0;
    }
    let s: f64 = r
        .iter()
        .enumerate()
        .map(|(k, &rank)| (k + 1) as f64 / rank as f64)
        .sum();
    s / r.len() as f64
}

/// Expected calibration error: `bins` equal-width bins over [0,1] of the confidence, weighted
/// |accuracy - mean confidence| (Guo et al. 2017); a confidence of exactly 1.0 goes in the last
/// bin.
///
/// A confidence `c` goes in bin `floor(c * bins)` (so bins are [k/bins, (k+1)/bins), the last
/// one closed); confidences outside [0, 1] are clamped. 0 for no predictions; `bins` of 0 is
/// taken as 1.
///
/// # Panics
/// When the two slices differ in length.
pub fn ece(confidence: &[f64], correct: &[bool], bins: usize) -> f64 {
    assert_eq!(confidence.len(), correct.len(), "ece: length mismatch");
    let n = confidence.len();
    if n == 0 {
        return 0.0;
    }
    let bins = bins.max(1);
    let mut count = vec![0usize; bins];
    let mut conf = vec![0f64; bins];
    let mut acc = vec![0f64; bins];
    for (&c, &y) in confidence.iter().zip(correct) {
        let c = c.clamp(0.0, 1.0);
        let b = ((c * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        conf[b] += c;
        acc[b] += f64::from(u8::from(y));
    }
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (acc[b] - conf[b]).abs() / n as f64)
        .sum()
}

/// Brier score: the mean of (p - y)^2 with y = 1 for a correct prediction; equals
/// scikit-learn's `brier_score_loss`. 0 for no predictions.
///
/// # Panics
/// When the two slices differ in length.
pub fn brier(confidence: &[f64], correct: &[bool]) -> f64 {
    assert_eq!(confidence.len(), correct.len(), "brier: length mismatch");
    if confidence.is_empty() {
        return 0.0;
    }
    let s: f64 = confidence
        .iter()
        .zip(correct)
        .map(|(&p, &y)| {
            let d = p - f64::from(u8::from(y));
            d * d
        })
        .sum();
    s / confidence.len() as f64
}

/// Share of `n_items` that appear at least once in the recommendation lists.
///
/// Ids at or above `n_items` are ignored; 0 when `n_items` is 0.
pub fn coverage(recommended: &[Vec<u32>], n_items: usize) -> f64 {
    if n_items == 0 {
        return 0.0;
    }
    let mut seen = vec![false; n_items];
    for &i in recommended.iter().flatten() {
        if let Some(s) = seen.get_mut(i as usize) {
            *s = true;
        }
    }
    seen.iter().filter(|&&s| s).count() as f64 / n_items as f64
}

/// Gini coefficient of recommendation counts over all n_items (items never recommended count
/// 0); 0 = equal, ->1 concentrated: G = sum_i (2i - n - 1) x_i / (n sum x) with i 1-based over
/// the counts sorted ascending; 0 if all zero.
///
/// Counts are expected to be non-negative; 0 for an empty slice.
pub fn gini(counts: &[f64]) -> f64 {
    let n = counts.len();
    let total: f64 = counts.iter().sum();
    if n == 0 || total <= 0.0 {
        return 0.0;
    }
    let mut x = counts.to_vec();
    x.sort_by(|a, b| a.total_cmp(b));
    let nf = n as f64;
    let s: f64 = x
        .iter()
        .enumerate()
        .map(|(i, &v)| (2.0 * (i + 1) as f64 - nf - 1.0) * v)
        .sum();
    s / (nf * total)
}

/// Mean negative log-likelihood of the labels under softmax(logits / t); queries whose label is
/// out of range (or whose list is empty) are skipped. None when no query is usable.
fn mean_nll(logits: &[Vec<f32>], labels: &[usize], t: f64) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for (z, &y) in logits.iter().zip(labels) {
        if y >= z.len() {
            continue;
        }
        s += log_sum_exp(z, t) - z[y] as f64 / t;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

/// ln sum exp(z / t), computed stably in f64 (-inf for no logits).
fn log_sum_exp(z: &[f32], t: f64) -> f64 {
    let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64)) / t;
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + z
        .iter()
        .map(|&v| (v as f64 / t - m).exp())
        .sum::<f64>()
        .ln()
}

/// Temperature scaling: the T > 0 that minimises the mean negative log-likelihood of
/// softmax(logits / T) at the label, each query its own candidate list, searched by
/// golden-section over log T in [ln 0.05, ln 20].
///
/// The NLL is convex in 1/T, hence unimodal in log T, so golden-section search finds the
/// minimum (to about 1e-9 in log T; a minimum beyond the interval returns its end). Queries
/// whose label is out of range of their list are skipped; 1.0 when none is usable.
///
/// # Panics
/// When `logits` and `labels` differ in length.
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> f64 {
    assert_eq!(
        logits.len(),
        labels.len(),
        "fit_temperature: length mismatch"
    );
    let f = |s: f64| mean_nll(logits, labels, s.exp());
    if f(0.0).is_none() {
        return 1.0;
    }
    let f = |s: f64| f(s).unwrap_or(f64::INFINITY);
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let mut c = b - inv_phi * (b - a);
    let mut d = a + inv_phi * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    while b - a > 1e-9 {
        if fc <= fd {
            b = d;
            d = c;
            fd = fc;
            c = b - inv_phi * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + inv_phi * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// Softmax of `logits / t`, computed stably in f64 (sums to 1; empty for no logits).
///
/// # Panics
/// When `t` is not positive and finite.
pub fn softmax_with_temperature(logits: &[f32], t: f64) -> Vec<f64> {
    assert!(t > 0.0 && t.is_finite(), "temperature must be positive");
    let m = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let mut e: Vec<f64> = logits.iter().map(|&v| ((v as f64 - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter_mut().for_each(|v| *v /= s);
    e
}

/// Softmax of `logits / t` with one more option outside the list, whose logit is `outside`
/// (not divided by `t`): the list's probabilities, which sum to 1 - p(outside). `None` is
/// [`softmax_with_temperature`].
///
/// # Panics
/// When `t` is not positive and finite.
pub fn softmax_with_outside(logits: &[f32], t: f64, outside: Option<f64>) -> Vec<f64> {
    let Some(b) = outside else {
        return softmax_with_temperature(logits, t);
    };
    assert!(t > 0.0 && t.is_finite(), "temperature must be positive");
    let m = logits.iter().fold(b, |m, &v| m.max(v as f64 / t));
    let mut e: Vec<f64> = logits.iter().map(|&v| (v as f64 / t - m).exp()).collect();
    let s: f64 = e.iter().sum::<f64>() + (b - m).exp();
    e.iter_mut().for_each(|v| *v /= s);
    e
}

/// Mean negative log-likelihood under [`softmax_with_outside`] with 1/T = `a` and outside
/// logit `b`, with its gradient and Hessian in (a, b); a label `None` is the outside option.
fn outside_nll(
    logits: &[Vec<f32>],
    labels: &[Option<usize>],
    a: f64,
    b: f64,
) -> (f64, [f64; 2], [f64; 3]) {
    // a multinomial logit with features x_j = (z_j, 0) and x_outside = (0, 1): the NLL is
    // lse(theta . x) - theta . x_y, its gradient E[x] - x_y and its Hessian Cov[x]
    let (mut f, mut g, mut h) = (0.0, [0.0; 2], [0.0; 3]);
    let mut n = 0usize;
    for (z, y) in logits.iter().zip(labels) {
        let m = z.iter().fold(b, |m, &v| m.max(a * v as f64));
        let (mut s0, mut s1, mut s2) = (0.0, 0.0, 0.0);
        for &v in z {
            let e = (a * v as f64 - m).exp();
            s0 += e;
            s1 += e * v as f64;
            s2 += e * (v as f64) * (v as f64);
        }
        let eo = (b - m).exp();
        let tot = s0 + eo;
        let (ez, ez2, po) = (s1 / tot, s2 / tot, eo / tot);
        f += m + tot.ln();
        match y {
            Some(y) => {
                f -= a * z[*y] as f64;
                g[0] -= z[*y] as f64;
            }
            None => {
                f -= b;
                g[1] -= 1.0;
            }
        }
        g[0] += ez;
        g[1] += po;
        h[0] += ez2 - ez * ez;
        h[1] += -ez * po;
        h[2] += po - po * po;
        n += 1;
    }
    let k = 1.0 / n.max(1) as f64;
    (f * k, [g[0] * k, g[1] * k], [h[0] * k, h[1] * k, h[2] * k])
}

/// Temperature scaling with a "none of these" option: the T and the outside logit b that
/// minimise the mean negative log-likelihood of [`softmax_with_outside`], where a query whose
/// right answer is not in its list (`None`) is labelled with the outside option.
///
/// A ranker scores only its candidates; when a share of queries have no right candidate at
/// all, a softmax over the list alone is overconfident by about that share. The NLL is convex
/// in (1/T, b) (a multinomial logit), minimised by Newton's method with step halving, from the
/// temperature that [`fit_temperature`] finds on the queries with a label in their list.
/// Returns `(T, None)` from [`fit_temperature`] when no query (or every query) has its label
/// outside, or lists are empty; T stays within [0.05, 20].
///
/// # Panics
/// When `logits` and `labels` differ in length.
pub fn fit_temperature_with_outside(
    logits: &[Vec<f32>],
    labels: &[Option<usize>],
) -> (f64, Option<f64>) {
    assert_eq!(
        logits.len(),
        labels.len(),
        "fit_temperature_with_outside: length mismatch"
    );
    let (zs, ys): (Vec<Vec<f32>>, Vec<Option<usize>>) = logits
        .iter()
        .zip(labels)
        .filter(|(z, y)| !z.is_empty() && y.is_none_or(|y| y < z.len()))
        .map(|(z, y)| (z.clone(), *y))
        .unzip();
    let (inside, pairs): (Vec<Vec<f32>>, Vec<usize>) = zs
        .iter()
        .zip(&ys)
        .filter_map(|(z, y)| y.map(|y| (z.clone(), y)))
        .unzip();
    let t0 = fit_temperature(&inside, &pairs);
    let outside = ys.len() - inside.len();
    if outside == 0 || inside.is_empty() {
        return (t0, None);
    }
    let (lo, hi) = (1.0 / 20.0, 1.0 / 0.05);
    // start: b such that the mean outside probability is the outside share
    let share = outside as f64 / ys.len() as f64;
    let lse = zs.iter().map(|z| log_sum_exp(z, t0)).sum::<f64>() / zs.len() as f64;
    let (mut a, mut b) = (1.0 / t0, lse + (share / (1.0 - share)).ln());
    let (mut f, mut g, mut h) = outside_nll(&zs, &ys, a, b);
    for _ in 0..100 {
        // Newton direction, -H^-1 g (H is a covariance: positive semi-definite; damped)
        let (h00, h01, h11) = (h[0] + 1e-12, h[1], h[2] + 1e-12);
        let det = h00 * h11 - h01 * h01;
        let (da, db) = if det > 1e-18 {
            (
                -(h11 * g[0] - h01 * g[1]) / det,
                -(h00 * g[1] - h01 * g[0]) / det,
            )
        } else {
            (-g[0], -g[1])
        };
        let mut step = 1.0;
        let mut moved = false;
        while step > 1e-6 {
            let (na, nb) = ((a + step * da).clamp(lo, hi), b + step * db);
            let (nf, ng, nh) = outside_nll(&zs, &ys, na, nb);
            if nf < f {
                (a, b, f, g, h) = (na, nb, nf, ng, nh);
                moved = true;
                break;
            }
            step /= 2.0;
        }
        if !moved || g[0].abs().max(g[1].abs()) < 1e-10 {
            break;
        }
    }
    (1.0 / a, Some(b))
}

/// Two-sample Kolmogorov-Smirnov result: statistic D and the two-sided p-value of
/// `scipy.stats.ks_2samp(a, b, method='asymp')`.
///
/// That p-value is not Kolmogorov's limiting series at sqrt(en) D: scipy (>= 1.5, checked
/// against 1.17) computes, two-sided, `p = kstwo.sf(D, round(en))` with en = n*m/(n+m): the
/// survival function of the finite-sample one-sample Kolmogorov distribution D_N at
/// N = round(en) (round half to even), computed by
/// Simard & L'Ecuyer's (2011) choice among exact formulas (Ruben-Gambino, Durbin's matrix as
/// Marsaglia-Tsang-Wang evaluate it, twice the Smirnov one-sided tail) and the Pelz-Good
/// asymptotic series. That is what [`ks_2samp`] implements (Durbin's matrix also where scipy
/// uses Pomeranz's recursion for N <= 140: both are exact and agree to ~1e-14).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsTest {
    /// sup |F_a - F_b| over the pooled sample.
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
}

/// Two-sample Kolmogorov-Smirnov test, two-sided, with scipy's `ks_2samp(a, b,
/// method='asymp')` p-value (see [`KsTest`]). NaNs are dropped; an empty sample, or an
/// effective size `round(n*m/(n+m))` of 0, gives statistic 0 and p-value 1 (scipy raises or
/// returns NaN there).
pub fn ks_2samp(a: &[f64], b: &[f64]) -> KsTest {
    let sorted = |v: &[f64]| {
        let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        s.sort_by(|x, y| x.total_cmp(y));
        s
    };
    let (a, b) = (sorted(a), sorted(b));
    let (n1, n2) = (a.len(), b.len());
    if n1 == 0 || n2 == 0 {
        return KsTest {
            statistic: 0.0,
            p_value: 1.0,
        };
    }
    // D over every pooled value, both empirical CDFs right-continuous (scipy's searchsorted
    // with side='right').
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < n1 || j < n2 {
        let v = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => unreachable!(),
        };
        while i < n1 && a[i] <= v {
            i += 1;
        }
        while j < n2 && b[j] <= v {
            j += 1;
        }
        d = d.max((i as f64 / n1 as f64 - j as f64 / n2 as f64).abs());
    }
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    let en = (m * n / (m + n)).round_ties_even();
    let p_value = if en < 1.0 {
        1.0
    } else {
        kolmogn_sf(en as u64, d)
    };
    KsTest {
        statistic: d,
        p_value,
    }
}

/// 2^128, scipy's scaling step in the Durbin matrix and Pomeranz computations.
const EP128: f64 = 3.402_823_669_209_385e38;
/// 2^-128.
const EM128: f64 = 2.938_735_877_055_719e-39;

/// `p * 2^e` without overflowing the intermediate power.
fn ldexp(mut p: f64, mut e: i64) -> f64 {
    while e > 0 {
        let s = e.min(1000);
        p *= 2f64.powi(s as i32);
        e -= s;
    }
    while e < 0 {
        let s = e.max(-1000);
        p *= 2f64.powi(s as i32);
        e -= s;
    }
    p
}

/// log(n! / n^n) by Stirling's series (scipy's `_log_nfactorial_div_n_pow_n`).
fn log_nfactorial_div_n_pow_n(n: f64) -> f64 {
    // B_{2j} / (2j (2j - 1)) for j = 8 down to 1 (Horner order).
    const C: [f64; 8] = [
        -3617.0 / 122_400.0,
        1.0 / 156.0,
        -691.0 / 360_360.0,
        1.0 / 1188.0,
        -1.0 / 1680.0,
        1.0 / 1260.0,
        -1.0 / 360.0,
        1.0 / 12.0,
    ];
    let rn = 1.0 / n;
    let y = rn / n;
    let poly = C.iter().fold(0.0, |acc, &c| acc * y + c);
    n.ln() / 2.0 - n + (2.0 * std::f64::consts::PI).ln() / 2.0 + rn * poly
}

/// P(D_n+ >= x), the one-sided Smirnov tail, by the Birnbaum-Tingey sum (all terms positive),
/// each term in logs: x * sum_{v=0}^{floor(n(1-x))} C(n,v) (x + v/n)^(v-1) (1 - x - v/n)^(n-v).
fn smirnov_sf(n: u64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    let vmax = (nf * (1.0 - x)).floor() as u64;
    let mut ln_c = 0.0; // ln C(n, v)
    let mut s = 0.0;
    for v in 0..=vmax {
        if v > 0 {
            ln_c += ((n - v + 1) as f64).ln() - (v as f64).ln();
        }
        let evn = x + v as f64 / nf;
        let omevn = 1.0 - evn;
        if omevn > 0.0 || v == n {
            let mut t = ln_c + (v as f64 - 1.0) * evn.ln();
            if v < n {
                t += (n - v) as f64 * omevn.ln();
            }
            if t > -745.0 {
                s += t.exp();
            }
        }
    }
    (s * x).clamp(0.0, 1.0)
}

/// P(D_n <= d) by Durbin's matrix as Marsaglia, Tsang & Wang (2003) compute it, with scipy's
/// scaling (`_kolmogn_DMTW`).
fn kolmogn_dmtw_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nd = n as f64 * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;
    let mut v = vec![0f64; m];
    let mut w = vec![0f64; m];
    let mut fac = 1.0;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] = (1.0 - h.powi(j as i32)) * fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32);
    v[m - 1] = (1.0 + tt) * fac;
    let mut hm = vec![0f64; m * m];
    for i in 1..m {
        for r in (i - 1)..m {
            hm[r * m + i] = w[r - (i - 1)];
        }
    }
    for r in 0..m {
        hm[r * m] = v[r];
    }
    for c in 0..m {
        hm[(m - 1) * m + c] = v[m - 1 - c];
    }
    let matmul = |x: &[f64], y: &[f64]| {
        let mut out = vec![0f64; m * m];
        for r in 0..m {
            for t in 0..m {
                let a = x[r * m + t];
                if a == 0.0 {
                    continue;
                }
                let (row, yr) = (&mut out[r * m..(r + 1) * m], &y[t * m..(t + 1) * m]);
                for (o, b) in row.iter_mut().zip(yr) {
                    *o += a * b;
                }
            }
        }
        out
    };
    let mut pw = vec![0f64; m * m];
    for r in 0..m {
        pw[r * m + r] = 1.0;
    }
    let (mut nn, mut expnt, mut hexpnt) = (n, 0i64, 0i64);
    while nn > 0 {
        if nn % 2 == 1 {
            pw = matmul(&pw, &hm);
            expnt += hexpnt;
        }
        hm = matmul(&hm, &hm);
        hexpnt *= 2;
        if hm[(k - 1) * m + (k - 1)].abs() > EP128 {
            hm.iter_mut().for_each(|x| *x /= EP128);
            hexpnt += 128;
        }
        nn /= 2;
    }
    let mut p = pw[(k - 1) * m + (k - 1)];
    let nf = n as f64;
    for i in 1..=n {
        p = i as f64 * p / nf;
        if p.abs() < EM128 {
            p *= EP128;
            expnt -= 128;
        }
    }
    ldexp(p, expnt)
}

/// The Pelz-Good (1976) asymptotic approximation of P(D_n <= x) (scipy's `_kolmogn_PelzGood`).
fn kolmogn_pelz_good_cdf(n: u64, x: f64) -> f64 {
    use std::f64::consts::PI;
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let (pi2, pi4, pi6) = (PI * PI, PI.powi(4), PI.powi(6));
    let sqrt2pi = (2.0 * PI).sqrt();
    let z = (n as f64).sqrt() * x;
    let (z2, z3, z4, z6) = (z * z, z.powi(3), z.powi(4), z.powi(6));
    let qlog = -pi2 / 8.0 / z2;
    if qlog < -708.0 {
        return 0.0;
    }
    let q = qlog.exp();
    let k1a = -z2;
    let k1b = pi2 / 4.0;
    let k2a = 6.0 * z6 + 2.0 * z4;
    let k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powi(8);
    let mut k = [0f64; 4];
    let maxk = (16.0 * z / PI).ceil() as i64;
    for kk in (1..=maxk).rev() {
        let m = (2 * kk - 1) as f64;
        let (m2, m4, m6) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf(8.0 * kk as f64);
        let coeffs = [
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m4,
            k3a + k3b * m2 + k3c * m4 + k3d * m6,
        ];
        for (kv, c) in k.iter_mut().zip(coeffs) {
            *kv = *kv * qpower + c;
        }
    }
    let div = [z, 6.0 * z4, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for (kv, dv) in k.iter_mut().zip(div) {
        *kv = *kv * q * sqrt2pi / dv;
    }
    let q = (-pi2 / 2.0 / z2).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let (mut k2extra, mut k3extra) = (0.0, 0.0);
    for kk in (1..=maxk).rev() {
        let kf = kk as f64;
        let ks2 = kf * kf;
        let qp = q.powf(ks2);
        k2extra += ks2 * qp;
        let kspi = PI * kf;
        k3extra += (sqrt3z + kspi) * (sqrt3z - kspi) * ks2 * qp;
    }
    k[2] += k2extra * pi2 * sqrt2pi / (-36.0 * z3);
    k[3] += k3extra * pi2 * sqrt2pi / (216.0 * z6);
    let nf = n as f64;
    k.iter()
        .enumerate()
        .map(|(i, &kv)| kv / nf.powf(i as f64 / 2.0))
        .sum()
}

/// P(D_n >= x) for the two-sided one-sample Kolmogorov statistic: scipy's `kstwo.sf(x, n)`
/// (`_kolmogn(n, x, cdf=False)`, after Simard & L'Ecuyer 2011).
fn kolmogn_sf(n: u64, x: f64) -> f64 {
    if x >= 1.0 {
        return 0.0;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let nf = n as f64;
    let t = nf * x;
    if t <= 1.0 {
        // Ruben-Gambino: P(D_n <= x) = n!/n^n (2t - 1)^n for 1/2n <= x <= 1/n.
        if t <= 0.5 {
            return 1.0;
        }
        let cdf = if n <= 140 {
            (1..=n).fold(1.0, |acc, i| {
                acc * (i as f64 * (1.0 / nf) * (2.0 * t - 1.0))
            })
        } else {
            (log_nfactorial_div_n_pow_n(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return (1.0 - cdf).clamp(0.0, 1.0);
    }
    if t >= nf - 1.0 {
        return (2.0 * (1.0 - x).powf(nf)).clamp(0.0, 1.0);
    }
    if x >= 0.5 {
        return (2.0 * smirnov_sf(n, x)).clamp(0.0, 1.0);
    }
    let nx2 = t * x;
    if n <= 140 {
        if nx2 <= 4.0 {
            return (1.0 - kolmogn_dmtw_cdf(n, x)).clamp(0.0, 1.0);
        }
        return (2.0 * smirnov_sf(n, x)).clamp(0.0, 1.0);
    }
    if nx2 >= 370.0 {
        return 0.0;
    }
    if nx2 >= 2.2 {
        return (2.0 * smirnov_sf(n, x)).clamp(0.0, 1.0);
    }
    let cdf = if nx2 >= 18.0 {
        1.0
    } else if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        kolmogn_dmtw_cdf(n, x)
    } else {
        kolmogn_pelz_good_cdf(n, x)
    };
    (1.0 - cdf).clamp(0.0, 1.0)
}

/// Population stability index between a reference and a recent sample: `bins` quantile bins of
/// the reference (edges at its quantiles, outermost open), share per bin with each share floored
/// at 1e-4, PSI = sum (r - e) ln(r / e).
///
/// The edges are the reference's k/bins quantiles (k = 1..bins-1, linear interpolation as
/// numpy's default); bin k holds the values in (edge_{k-1}, edge_k] (numpy's
/// `searchsorted(edges, x, side='left')`). `e` is the reference share, `r` the recent one.
/// NaNs are dropped; 0 when either sample is empty or `bins` < 2.
pub fn psi(reference: &[f64], recent: &[f64], bins: usize) -> f64 {
    let mut refs: Vec<f64> = reference.iter().copied().filter(|x| !x.is_nan()).collect();
    let rec: Vec<f64> = recent.iter().copied().filter(|x| !x.is_nan()).collect();
    if refs.is_empty() || rec.is_empty() || bins < 2 {
        return 0.0;
    }
    refs.sort_by(|a, b| a.total_cmp(b));
    let last = (refs.len() - 1) as f64;
    let edges: Vec<f64> = (1..bins)
        .map(|k| {
            let pos = k as f64 / bins as f64 * last;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            refs[lo] + (refs[hi] - refs[lo]) * (pos - lo as f64)
        })
        .collect();
    let shares = |xs: &[f64]| {
        let mut c = vec![0usize; bins];
        for &x in xs {
            c[edges.partition_point(|&e| e < x)] += 1;
        }
        c.into_iter()
            .map(|k| (k as f64 / xs.len() as f64).max(1e-4))
            .collect::<Vec<f64>>()
    };
    let (e, r) = (shares(&refs), shares(&rec));
    e.iter()
        .zip(&r)
        .map(|(&e, &r)| (r - e) * (r / e).ln())
        .sum()
}

/// Canary comparison of two success proportions (candidate vs production): pooled
/// two-proportion z-test, two-sided p-value, 95% Wald CI of the difference (candidate -
/// production), and the per-arm sample size needed to detect the observed difference (or
/// `min_effect` if larger) at alpha 0.05 two-sided, power 0.8 (standard formula with p_bar).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProportionTest {
    /// Candidate rate minus production rate.
    pub diff: f64,
    /// diff / sqrt(p(1-p)(1/n_a + 1/n_b)) with the pooled rate p; 0 when that is 0.
    pub z: f64,
    /// Two-sided p-value of z (1 when z is 0).
    pub p_value: f64,
    /// Lower end of the 95% Wald interval of diff (unpooled standard error).
    pub ci_low: f64,
    /// Upper end of the 95% Wald interval of diff.
    pub ci_high: f64,
    /// Per-arm sample size to detect max(|diff|, min_effect) at alpha 0.05 two-sided with
    /// power 0.8; None when that effect is 0 (or not a number).
    pub n_needed_per_arm: Option<u64>,
}

/// z of the two-sided 5% level: the 0.975 normal quantile.
const Z_975: f64 = 1.959_963_984_540_054;
/// z of 80% power: the 0.8 normal quantile.
const Z_80: f64 = 0.841_621_233_572_914_3;

/// Pooled two-proportion z-test of the candidate (`a`) against production (`b`), as
/// statsmodels' `proportions_ztest([s_a, s_b], [n_a, n_b])`, with the 95% Wald interval of
/// the difference and the sample size per arm
/// `n = (z_{0.975} sqrt(2 p_bar (1 - p_bar)) + z_{0.8} sqrt(p1 (1 - p1) + p2 (1 - p2)))^2 / delta^2`,
/// rounded up, where p1 is production's rate, delta = max(|diff|, min_effect),
/// p2 = p1 +- delta in the direction of the observed difference (the other way when that
/// leaves [0, 1]) and p_bar = (p1 + p2) / 2. None when either n is 0.
pub fn two_proportion_test(
    success_a: u64,
    n_a: u64,
    success_b: u64,
    n_b: u64,
    min_effect: f64,
) -> Option<ProportionTest> {
    if n_a == 0 || n_b == 0 {
        return None;
    }
    let (na, nb) = (n_a as f64, n_b as f64);
    let (pa, pb) = (success_a as f64 / na, success_b as f64 / nb);
    let diff = pa - pb;
    let pool = (success_a + success_b) as f64 / (na + nb);
    let se_pool = (pool * (1.0 - pool) * (1.0 / na + 1.0 / nb)).sqrt();
    let (z, p_value) = if se_pool > 0.0 {
        let z = diff / se_pool;
        (z, (2.0 * normal_cdf(-z.abs())).min(1.0))
    } else {
        (0.0, 1.0)
    };
    let se = (pa * (1.0 - pa) / na + pb * (1.0 - pb) / nb).sqrt();
    let delta = diff.abs().max(min_effect);
    let n_needed_per_arm = if delta > 0.0 && delta.is_finite() {
        let up = diff >= 0.0;
        let mut p2 = if up { pb + delta } else { pb - delta };
        if !(0.0..=1.0).contains(&p2) {
            p2 = if up { pb - delta } else { pb + delta };
        }
        let p2 = p2.clamp(0.0, 1.0);
        let pbar = (pb + p2) / 2.0;
        let num = Z_975 * (2.0 * pbar * (1.0 - pbar)).sqrt()
            + Z_80 * (pb * (1.0 - pb) + p2 * (1.0 - p2)).sqrt();
        let n = (num / delta).powi(2).ceil();
        (n.is_finite()).then_some(n.max(1.0) as u64)
    } else {
        None
    };
    Some(ProportionTest {
        diff,
        z,
        p_value,
        ci_low: diff - Z_975 * se,
        ci_high: diff + Z_975 * se,
        n_needed_per_arm,
    })
}

/// erfc(x) for x >= 0: a positive-term series of erf below 2.5, the Laplace continued fraction
/// (Lentz's method) above; relative error ~1e-13 or better.
fn erfc_pos(x: f64) -> f64 {
    use std::f64::consts::PI;
    if x < 2.5 {
        // erf(x) = 2/sqrt(pi) e^{-x^2} sum_n 2^n x^{2n+1} / (1*3*...*(2n+1))
        let x2 = x * x;
        let (mut term, mut sum, mut k) = (x, x, 0u32);
        loop {
            k += 1;
            term *= 2.0 * x2 / (2 * k + 1) as f64;
            sum += term;
            if term <= sum * 1e-17 || k > 500 {
                break;
            }
        }
        1.0 - 2.0 / PI.sqrt() * (-x2).exp() * sum
    } else {
        // erfc(x) = e^{-x^2}/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))).
        let tiny = 1e-300;
        let mut f = x;
        let (mut c, mut d) = (x, 0.0);
        for k in 1..2000 {
            let a = k as f64 / 2.0;
            d = x + a * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = x + a / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x * x).exp() / (PI.sqrt() * f)
    }
}

/// Standard normal CDF.
///
/// Computed as erfc(-x / sqrt 2) / 2, with erfc from a positive-term series of erf near 0 and
/// the Laplace continued fraction in the tails, so that small tail probabilities keep their
/// relative accuracy (matches scipy's `norm.cdf` to ~1e-13 relative).
pub fn normal_cdf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let y = -x * std::f64::consts::FRAC_1_SQRT_2;
    if y >= 0.0 {
        0.5 * erfc_pos(y)
    } else {
        1.0 - 0.5 * erfc_pos(-y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::rng::Rng;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
    }

    #[test]
    fn ranking_metrics_by_hand_and_ndcg_matches_sklearn() {
        let m = ranking_metrics(&[Some(1), Some(3), None, Some(12), Some(2)]);
        assert_eq!(m.n, 5);
        close(m.mrr, (1.0 + 1.0 / 3.0 + 1.0 / 12.0 + 0.5) / 5.0, 1e-15);
        assert_eq!(m.map, m.mrr);
        close(m.hit_at_1, 0.2, 1e-15);
        close(m.hit_at_3, 0.6, 1e-15);
        close(m.hit_at_5, 0.6, 1e-15);
        close(m.hit_at_10, 0.6, 1e-15);
        close(m.ndcg_at_10, (1.0 + 0.5 + 1.0 / 3f64.log2()) / 5.0, 1e-15);
        // Produced with scikit-learn 1.9.1 (one relevant item among 12 candidates per query):
        //   ranks = [1, 3, 12, 7, 2, 10, 11]; vals = []
        //   for r in ranks:
        //       y = np.zeros((1, 12)); y[0, r - 1] = 1
        //       vals.append(ndcg_score(y, np.arange(12, 0, -1)[None, :].astype(float), k=10))
        //   np.mean(vals)
        let m = ranking_metrics(&[
            Some(1),
            Some(3),
            Some(12),
            Some(7),
            Some(2),
            Some(10),
            Some(11),
        ]);
        close(m.ndcg_at_10, 0.3933325590318112, 1e-12);
        close(m.hit_at_10, 5.0 / 7.0, 1e-15);
        let empty = ranking_metrics(&[]);
        assert_eq!((empty.n, empty.mrr, empty.ndcg_at_10), (0, 0.0, 0.0));
        assert_eq!(ranking_metrics(&[Some(0)]).mrr, 0.0);
    }

    #[test]
    fn average_precision_matches_sklearn() {
        // Produced with scikit-learn 1.9.1, scores decreasing with rank:
        //   average_precision_score([0,1,0,1,1,0,0,1,0,0], np.arange(10, 0, -1))      -> 0.525
        //   average_precision_score([1,0,0,0,0,1,0,0,0,1,0,0], np.arange(12, 0, -1))  -> 0.5444444444444444
        close(average_precision(&[8, 2, 5, 4]), 0.525, 1e-15);
        close(average_precision(&[1, 6, 10]), 0.5444444444444444, 1e-15);
        close(average_precision(&[3]), 1.0 / 3.0, 1e-15);
        assert_eq!(average_precision(&[]), 0.0);
    }

    #[test]
    fn brier_and_ece_match_references() {
        // Produced with scikit-learn 1.9.1:
        //   brier_score_loss([1,0,0,1,1,0,1,1], [0.9,0.1,0.75,0.4,1.0,0.0,0.55,0.3]) -> 0.204375
        let p = [0.9, 0.1, 0.75, 0.4, 1.0, 0.0, 0.55, 0.3];
        let y = [true, false, false, true, true, false, true, true];
        close(brier(&p, &y), 0.20437499999999997, 1e-15);
        // Produced with numpy 2.4.6, bins = min(floor(c * bins), bins - 1):
        //   c = np.array([0.95,0.62,1.0,0.33,0.81,0.07,0.5,0.99,0.45,0.71,0.2,0.88,0.0,0.64,0.39])
        //   y = np.array([1,0,1,1,1,0,0,1,1,0,0,1,0,1,0])
        //   def ece(c, y, bins):
        //       b = np.minimum((c * bins).astype(int), bins - 1); e = 0
        //       for k in range(bins):
        //           m = b == k
        //           if m.any(): e += m.sum() / len(c) * abs(y[m].mean() - c[m].mean())
        //       return e
        //   [ece(c, y, b) for b in (1, 2, 3, 5, 10, 15)]
        let c = [
            0.95, 0.62, 1.0, 0.33, 0.81, 0.07, 0.5, 0.99, 0.45, 0.71, 0.2, 0.88, 0.0, 0.64, 0.39,
        ];
        let y: Vec<bool> = [1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0]
            .iter()
            .map(|&v| v == 1)
            .collect();
        let expect = [
            (1, 0.03600000000000003),
            (2, 0.11066666666666666),
            (3, 0.0893333333333333),
            (5, 0.1026666666666667),
            (10, 0.196),
            (15, 0.248),
        ];
        for (bins, e) in expect {
            close(ece(&c, &y, bins), e, 1e-12);
        }
        // Perfect calibration within a bin gives 0.
        close(ece(&[0.5, 0.5], &[true, false], 10), 0.0, 1e-15);
        assert_eq!(ece(&[], &[], 10), 0.0);
    }

    #[test]
    fn coverage_and_gini() {
        let recs = vec![vec![0, 2, 2], vec![5, 2], vec![99]];
        close(coverage(&recs, 10), 0.3, 1e-15);
        assert_eq!(coverage(&recs, 0), 0.0);
        // Produced with numpy: x = np.sort([0,3,1,0,10,2,5,0]); n = 8; i = np.arange(1, 9)
        //   np.sum((2*i - n - 1) * x) / (n * x.sum())  -> 0.625
        close(
            gini(&[0.0, 3.0, 1.0, 0.0, 10.0, 2.0, 5.0, 0.0]),
            0.625,
            1e-15,
        );
        close(gini(&[4.0; 6]), 0.0, 1e-15);
        assert_eq!(gini(&[0.0; 4]), 0.0);
        // All on one of n items: (n - 1) / n.
        close(gini(&[0.0, 0.0, 0.0, 7.0]), 0.75, 1e-15);
    }

    #[test]
    fn normal_cdf_matches_scipy() {
        // Produced with scipy 1.17.1: [repr(float(norm.cdf(v))) for v in xs]
        let cases = [
            (-20.0, 2.7536241186061556e-89),
            (-8.5, 9.47953482220325e-18),
            (-5.0, 2.866515718791933e-07),
            (-3.2, 0.0006871379379158471),
            (-1.959963984540054, 0.025),
            (-1.0, 0.15865525393145707),
            (-0.3, 0.3820885778110474),
            (0.0, 0.5),
            (0.25, 0.5987063256829237),
            (1.0, 0.8413447460685429),
            (1.7, 0.955434537241457),
            (2.5, 0.9937903346742238),
            (3.6, 0.9998408914098424),
            (6.0, 0.9999999990134123),
            (9.0, 1.0),
        ];
        for (x, p) in cases {
            let got = normal_cdf(x);
            assert!((got - p).abs() <= 1e-12 * p, "cdf({x}) = {got} vs {p}");
        }
        // Symmetry and a dense check of erfc against the two sides of its definition.
        for k in -600..=600 {
            let x = k as f64 / 100.0;
            close(normal_cdf(x) + normal_cdf(-x), 1.0, 1e-15);
        }
        assert!(normal_cdf(f64::NAN).is_nan());
    }

    #[test]
    fn kolmogorov_sf_matches_scipy_kstwo() {
        // Produced with scipy 1.17.1, covering every branch of scipy's _kolmogn (Ruben-Gambino,
        // Durbin matrix, Pomeranz's range, Pelz-Good, Smirnov's tail):
        //   for n in [5, 26, 100, 140, 141, 359, 1000, 5000, 100001, 250000]:
        //       for x in [0.75/n, 0.9/n, 1.5/n, 0.6/sqrt(n), 1.2/sqrt(n), 1.7/sqrt(n),
        //                 2.5/sqrt(n), 0.3, 0.55, 1 - 1.5/n, 1 - 0.5/n]:
        //           (n, x, float(kstwo.sf(x, n)))  # kept where 0 < p and x < 1
        let grid: &[(u64, f64, f64)] = &[
            (5, 0.15, 0.9988),
            (5, 0.18, 0.987417088),
            (5, 0.3, 0.664),
            (5, 0.2683281572999747, 0.7836692682117719),
            (5, 0.5366563145999494, 0.07107678230606948),
            (5, 0.7602631123499285, 0.0016027701604897995),
            (5, 0.3, 0.664),
            (5, 0.55, 0.059696249999999965),
            (5, 0.7, 0.005560000000000004),
            (5, 0.9, 1.9999999999999978e-05),
            (26, 0.03461538461538462, 0.999999999999802),
            (26, 0.057692307692307696, 0.9999567679779621),
            (26, 0.11766968108291043, 0.8237377714191914),
            (26, 0.23533936216582085, 0.09470334878332975),
            (26, 0.3333974297349129, 0.004448385727940263),
            (26, 0.4902903378454601, 2.7477642486564273e-06),
            (26, 0.3, 0.014293709651226782),
            (26, 0.55, 6.488428608968851e-08),
            (26, 0.9423076923076923, 1.2305398544182703e-32),
            (26, 0.9807692307692307, 4.841088935880314e-45),
            (100, 0.009000000000000001, 1.0),
            (100, 0.015, 1.0),
            (100, 0.06, 0.8428847956274123),
            (100, 0.12, 0.1033037490181987),
            (100, 0.16999999999999998, 0.005376406596376887),
            (100, 0.25, 5.408871776434847e-06),
            (100, 0.3, 1.7719869892662917e-08),
            (100, 0.55, 6.179111218549733e-29),
            (100, 0.985, 8.131223550705027e-183),
            (100, 0.995, 1.5777218104421636e-230),
            (140, 0.0064285714285714285, 1.0),
            (140, 0.010714285714285714, 1.0),
            (140, 0.050709255283710994, 0.8461062544735598),
            (140, 0.10141851056742199, 0.10468682507194148),
            (140, 0.1436762233038478, 0.005512649956895624),
            (140, 0.21128856368212914, 5.807997673785573e-06),
            (140, 0.3, 1.1370251710737309e-11),
            (140, 0.55, 2.6809421873061284e-40),
            (140, 0.9892857142857143, 3.132429234392794e-276),
            (141, 0.006382978723404256, 1.0),
            (141, 0.010638297872340425, 1.0),
            (141, 0.050529115263991134, 0.846171510746462),
            (141, 0.10105823052798227, 0.10471366448734887),
            (141, 0.14316582658130822, 0.005515250960112069),
            (141, 0.21053798026662973, 5.81552565761188e-06),
            (141, 0.3, 9.46134771413843e-12),
            (141, 0.55, 1.3938684369330333e-40),
            (141, 0.9893617021276596, 1.2302762440585609e-278),
            (359, 0.0025069637883008357, 1.0),
            (359, 0.004178272980501393, 1.0),
            (359, 0.031666788838155574, 0.8528174668811224),
            (359, 0.06333357767631115, 0.10752287509731207),
            (359, 0.08972256837477412, 0.005778614044090268),
            (359, 0.1319449534923149, 6.548518264974354e-06),
            (359, 0.3, 3.7660907396676253e-29),
            (359, 0.55, 1.6519770088411677e-102),
            (1000, 0.0009, 1.0),
            (1000, 0.0015, 1.0),
            (1000, 0.018973665961010275, 0.8573684410456419),
            (1000, 0.03794733192202055, 0.10941541429803348),
            (1000, 0.05375872022286245, 0.005945313946545005),
            (1000, 0.07905694150420949, 6.967265066703322e-06),
            (1000, 0.3, 2.590715705736845e-80),
            (1000, 0.55, 1.356299236791213e-284),
            (5000, 0.00018, 1.0),
            (5000, 0.0003, 1.0),
            (5000, 0.00848528137423857, 0.8611745104587194),
            (5000, 0.01697056274847714, 0.11098122447398728),
            (5000, 0.024041630560342614, 0.006076242282896832),
            (5000, 0.035355339059327376, 7.258404360512366e-06),
            (100001, 8.999910000899992e-06, 1.0),
            (100001, 1.4999850001499985e-05, 1.0),
            (100001, 0.0018973571093391975, 0.8635855392420047),
            (100001, 0.003794714218678395, 0.11196589094928922),
            (100001, 0.0053758451431277264, 0.00615518156331792),
            (100001, 0.007905654622246657, 7.413045587236896e-06),
            (250000, 3.6000000000000003e-06, 1.0),
            (250000, 6e-06, 1.0),
            (250000, 0.0012, 0.8638416567953803),
            (250000, 0.0024, 0.11207018012929637),
            (250000, 0.0034, 0.006163384602370688),
            (250000, 0.005, 7.428069840216574e-06),
        ];
        for &(n, x, p) in grid {
            let got = kolmogn_sf(n, x);
            assert!(
                (got - p).abs() <= 1e-10 + 1e-7 * p,
                "kstwo.sf({x}, {n}) = {got} vs scipy {p}"
            );
        }
    }

    /// x_i = sin(a i) b + (i mod 7) c, as the Python snippet builds the samples.
    fn wave(n: usize, a: f64, b: f64, c: f64) -> Vec<f64> {
        (0..n)
            .map(|i| (a * i as f64).sin() * b + (i % 7) as f64 * c)
            .collect()
    }

    #[test]
    fn ks_2samp_matches_scipy_asymp() {
        // Produced with scipy 1.17.1:
        //   data = lambda n, a, b, c: np.array([math.sin(a*i)*b + (i % 7)*c for i in range(n)])
        //   r = ks_2samp(data(*A), data(*B), method='asymp'); r.statistic, r.pvalue
        let cases = [
            (
                (60, 0.7, 1.0, 0.1),
                (45, 1.1, 1.0, 0.12),
                0.061111111111111116,
                0.9998572491437344,
            ),
            (
                (800, 0.37, 1.0, 0.05),
                (650, 0.91, 1.0, 0.055),
                0.03173076923076923,
                0.8511519744210305,
            ),
            (
                (3000, 0.37, 1.0, 0.05),
                (2500, 0.91, 1.3, 0.05),
                0.16313333333333335,
                3.4688080267726664e-32,
            ),
            (
                (3, 0.5, 1.0, 0.0),
                (3, 0.9, 1.0, 0.3),
                0.6666666666666667,
                0.22222222222222213,
            ),
            (
                (200, 0.3, 1.0, 0.0),
                (9000, 0.77, 1.0, 0.02),
                0.10022222222222221,
                0.036311332718236944,
            ),
        ];
        for ((n1, a1, b1, c1), (n2, a2, b2, c2), d, p) in cases {
            let r = ks_2samp(&wave(n1, a1, b1, c1), &wave(n2, a2, b2, c2));
            close(r.statistic, d, 1e-12);
            assert!((r.p_value - p).abs() <= 1e-10 + 1e-7 * p, "{r:?} vs {p}");
        }
        let same = ks_2samp(&[1.0, 2.0, 3.0], &[3.0, 1.0, 2.0]);
        assert_eq!(same.statistic, 0.0);
        assert_eq!(same.p_value, 1.0);
        assert_eq!(ks_2samp(&[], &[1.0]).p_value, 1.0);
    }

    #[test]
    fn psi_matches_numpy() {
        // Produced with numpy 2.4.6:
        //   def psi(ref, rec, bins):
        //       edges = np.quantile(ref, np.arange(1, bins) / bins)
        //       e = np.maximum(np.bincount(np.searchsorted(edges, ref, side='left'), minlength=bins) / len(ref), 1e-4)
        //       r = np.maximum(np.bincount(np.searchsorted(edges, rec, side='left'), minlength=bins) / len(rec), 1e-4)
        //       return np.sum((r - e) * np.log(r / e))
        //   psi(data(500, .37, 1, .05), data(300, .91, 1, .3) + 0.2, 10)   -> 2.202546572716757
        //   psi(np.arange(100) % 4 * 1., np.arange(70) % 5 * 1., 10)        -> 1.5640491119253044
        //   psi(data(500, .37, 1, .05), data(400, .37, 1, .05), 10)         -> 0.0004955659122052613
        let shifted: Vec<f64> = wave(300, 0.91, 1.0, 0.3).iter().map(|x| x + 0.2).collect();
        close(
            psi(&wave(500, 0.37, 1.0, 0.05), &shifted, 10),
            2.202546572716757,
            1e-12,
        );
        let r: Vec<f64> = (0..100).map(|i| (i % 4) as f64).collect();
        let s: Vec<f64> = (0..70).map(|i| (i % 5) as f64).collect();
        close(psi(&r, &s, 10), 1.5640491119253044, 1e-12);
        close(
            psi(&wave(500, 0.37, 1.0, 0.05), &wave(400, 0.37, 1.0, 0.05), 10),
            0.0004955659122052613,
            1e-14,
        );
        let x = wave(500, 0.37, 1.0, 0.05);
        close(psi(&x, &x, 10), 0.0, 1e-15);
        assert_eq!(psi(&x, &[], 10), 0.0);
    }

    #[test]
    fn two_proportion_test_matches_statsmodels() {
        // Produced with statsmodels 0.15.0 and scipy 1.17.1:
        //   z, p = proportions_ztest([sa, sb], [na, nb])
        //   lo, hi = confint_proportions_2indep(sa, na, sb, nb, method='wald', compare='diff')
        //   n = ceil(((norm.ppf(.975)*sqrt(2*pbar*(1-pbar)) + norm.ppf(.8)*sqrt(p1*(1-p1)+p2*(1-p2)))/d)**2)
        //   with p1 = sb/nb, d = max(|diff|, min_effect), p2 = p1 + d*sign(diff), pbar = (p1+p2)/2
        let cases = [
            (
                (230, 1000, 200, 1000, 0.01),
                0.03,
                1.632872212837632,
                0.10249587537989271,
                -0.00598549386149911,
                0.0659854938614991,
                2943,
            ),
            (
                (45, 120, 61, 130, 0.2),
                -0.09423076923076923,
                -1.50622850142342,
                0.1320085252249964,
                -0.2161417779081206,
                0.027680239446582156,
                91,
            ),
            (
                (9, 10, 500, 1000, 0.0),
                0.4,
                2.517346071169913,
                0.011824262390571643,
                0.21149670005164192,
                0.5885032999483581,
                20,
            ),
        ];
        for ((sa, na, sb, nb, me), diff, z, p, lo, hi, n) in cases {
            let t = two_proportion_test(sa, na, sb, nb, me).unwrap();
            close(t.diff, diff, 1e-15);
            close(t.z, z, 1e-12);
            close(t.p_value, p, 1e-12);
            close(t.ci_low, lo, 1e-12);
            close(t.ci_high, hi, 1e-12);
            assert_eq!(t.n_needed_per_arm, Some(n));
        }
        assert!(two_proportion_test(1, 0, 1, 10, 0.0).is_none());
        let flat = two_proportion_test(0, 10, 0, 10, 0.0).unwrap();
        assert_eq!(
            (flat.z, flat.p_value, flat.n_needed_per_arm),
            (0.0, 1.0, None)
        );
    }

    #[test]
    fn softmax_sums_to_one_and_sharpens_with_low_temperature() {
        let z = [2.0f32, 1.0, -1.0];
        let p = softmax_with_temperature(&z, 1.0);
        let e: Vec<f64> = z.iter().map(|&v| (v as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        for (a, b) in p.iter().zip(&e) {
            close(*a, b / s, 1e-15);
        }
        let cold = softmax_with_temperature(&z, 0.1);
        let hot = softmax_with_temperature(&z, 10.0);
        assert!(cold[0] > p[0] && p[0] > hot[0]);
        close(hot.iter().sum::<f64>(), 1.0, 1e-15);
        // Large logits do not overflow.
        let big = softmax_with_temperature(&[1000.0, 999.0], 1.0);
        close(big[0], 1.0 / (1.0 + (-1f64).exp()), 1e-15);
    }

    /// The label that `u` in [0, 1) draws from probabilities `p` (inverse CDF); None when `u`
    /// is beyond their sum (the outside option, or rounding).
    fn draw_label(p: &[f64], u: f64) -> Option<usize> {
        let mut acc = 0.0;
        p.iter().position(|pi| {
            acc += pi;
            u < acc
        })
    }

    #[test]
    fn fit_temperature_recovers_the_generating_temperature() {
        // Labels drawn from softmax(z / 2) with the seeded generator: the NLL-optimal T is ~2.
        let mut rng = Rng::new(17);
        let (mut logits, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..6000 {
            let k = 5 + rng.below(10);
            let z: Vec<f32> = (0..k).map(|_| (rng.normal() * 3.0) as f32).collect();
            let p = softmax_with_temperature(&z, 2.0);
            let y = draw_label(&p, rng.unit()).unwrap_or(k - 1);
            logits.push(z);
            labels.push(y);
        }
        let t = fit_temperature(&logits, &labels);
        assert!((t - 2.0).abs() < 0.1, "T = {t}");
        let nll = |t: f64| mean_nll(&logits, &labels, t).unwrap();
        assert!(nll(t) <= nll(1.0));
        // It is the minimum: nudging T either way does not lower the NLL.
        assert!(nll(t) <= nll(t * 1.01) && nll(t) <= nll(t / 1.01));
        // No usable query: 1.
        assert_eq!(fit_temperature(&[vec![1.0]], &[3]), 1.0);
        // Overconfident logits whose argmax is always right: T hits the lower end.
        let t = fit_temperature(&[vec![5.0, 0.0], vec![0.0, 4.0]], &[0, 1]);
        close(t, 0.05, 1e-6);
    }

    #[test]
    fn the_outside_option_is_fitted_where_some_right_answers_are_not_in_the_list() {
        // Labels drawn from softmax over (z / 1.5, outside logit 0.7): the fit finds both, and
        // the list's probabilities then sum to 1 - p(outside).
        let mut rng = Rng::new(23);
        let (mut logits, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..20000 {
            let k = 3 + rng.below(12);
            let z: Vec<f32> = (0..k).map(|_| (rng.normal() * 2.0) as f32).collect();
            let p = softmax_with_outside(&z, 1.5, Some(0.7));
            let y = draw_label(&p, rng.unit());
            logits.push(z);
            labels.push(y);
        }
        let share = labels.iter().filter(|y| y.is_none()).count() as f64 / labels.len() as f64;
        assert!(share > 0.05, "outside share {share}");
        let (t, b) = fit_temperature_with_outside(&logits, &labels);
        let b = b.expect("an outside logit");
        assert!((t - 1.5).abs() < 0.06, "T = {t}");
        assert!((b - 0.7).abs() < 0.06, "b = {b}");
        // the minimum: the NLL does not fall when either parameter is nudged
        let nll = |a: f64, b: f64| outside_nll(&logits, &labels, a, b).0;
        let f = nll(1.0 / t, b);
        for (da, db) in [(0.01, 0.0), (-0.01, 0.0), (0.0, 0.01), (0.0, -0.01)] {
            assert!(f <= nll(1.0 / t + da, b + db));
        }
        // the analytic gradient against finite differences
        let (_, g, _) = outside_nll(&logits[..200], &labels[..200], 0.8, 0.3);
        let e = 1e-5;
        let f2 = |a: f64, b: f64| outside_nll(&logits[..200], &labels[..200], a, b).0;
        close(
            g[0],
            (f2(0.8 + e, 0.3) - f2(0.8 - e, 0.3)) / (2.0 * e),
            1e-6,
        );
        close(
            g[1],
            (f2(0.8, 0.3 + e) - f2(0.8, 0.3 - e)) / (2.0 * e),
            1e-6,
        );
        // probabilities: the list's sum is 1 - p(outside), None is the plain softmax
        let p = softmax_with_outside(&[1.0, 2.0], 1.0, Some(1.5));
        let eo = 1.5f64.exp();
        let tot = 1f64.exp() + 2f64.exp() + eo;
        close(p.iter().sum::<f64>(), 1.0 - eo / tot, 1e-12);
        assert_eq!(
            softmax_with_outside(&[1.0, 2.0], 2.0, None),
            softmax_with_temperature(&[1.0, 2.0], 2.0)
        );
        // every label in its list: the plain temperature, no outside option
        let inside: Vec<Option<usize>> = labels.iter().map(|y| Some(y.unwrap_or(0))).collect();
        let (t2, b2) = fit_temperature_with_outside(&logits, &inside);
        assert_eq!(b2, None);
        let plain: Vec<usize> = inside.iter().map(|y| y.unwrap()).collect();
        assert_eq!(t2, fit_temperature(&logits, &plain));
    }
}
