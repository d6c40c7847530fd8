//! Just enough linear algebra for layout initialisation: the leading eigenvectors of a
//! symmetric positive semi-definite operator by subspace (block power) iteration. No BLAS:
//! the operators here are a 384 x 384 covariance or a sparse graph, both cheap to apply.

use super::rng::Rng;

/// Orthonormalise the columns in place (modified Gram-Schmidt). A column that collapses is
/// replaced by a fresh random one, so the block keeps its rank.
pub fn orthonormalize(cols: &mut [Vec<f64>], rng: &mut Rng) {
    for i in 0..cols.len() {
        for _attempt in 0..3 {
            for j in 0..i {
                let (a, b) = cols.split_at_mut(i);
                let proj: f64 = a[j].iter().zip(b[0].iter()).map(|(x, y)| x * y).sum();
                for (y, x) in b[0].iter_mut().zip(a[j].iter()) {
                    *y -= proj * x;
                }
            }
            let norm = cols[i].iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 1e-12 {
                cols[i].iter_mut().for_each(|x| *x /= norm);
                break;
            }
            cols[i].iter_mut().for_each(|x| *x = rng.normal());
        }
    }
}

/// The `m` leading eigenvectors (largest eigenvalues first) of the n x n symmetric PSD operator
/// `apply(x, y)` (y = A x), each orthogonal to the unit vectors in `deflate`.
pub fn top_eigenvectors(
    n: usize,
    m: usize,
    iters: usize,
    seed: u64,
    deflate: &[Vec<f64>],
    cancel: &dyn Fn() -> bool,
    apply: impl Fn(&[f64], &mut [f64]),
) -> Option<(Vec<Vec<f64>>, Vec<f64>)> {
    let mut rng = Rng::new(seed);
    let project_out = |v: &mut Vec<f64>| {
        for d in deflate {
            let p: f64 = v.iter().zip(d).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(d).for_each(|(a, b)| *a -= p * b);
        }
    };
    let mut q: Vec<Vec<f64>> = (0..m)
        .map(|_| (0..n).map(|_| rng.normal()).collect())
        .collect();
    q.iter_mut().for_each(&project_out);
    orthonormalize(&mut q, &mut rng);
    let mut y = vec![0f64; n];
    for _ in 0..iters {
        if cancel() {
            return None;
        }
        for c in q.iter_mut() {
            apply(c, &mut y);
            c.copy_from_slice(&y);
            project_out(c);
        }
        orthonormalize(&mut q, &mut rng);
    }
    // Rayleigh quotients, then order by them.
    let mut vals: Vec<f64> = q
        .iter()
        .map(|c| {
            apply(c, &mut y);
            c.iter().zip(&y).map(|(a, b)| a * b).sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| vals[*b].total_cmp(&vals[*a]));
    let q2 = order.iter().map(|i| q[*i].clone()).collect();
    vals = order.iter().map(|i| vals[*i]).collect();
    Some((q2, vals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_leading_eigenvectors_of_a_diagonal_operator() {
        let diag = [5.0, 1.0, 4.0, 0.5, 3.0, 0.1];
        let (v, vals) = top_eigenvectors(6, 3, 200, 1, &[], &|| false, |x, y| {
            for i in 0..6 {
                y[i] = diag[i] * x[i];
            }
        })
        .unwrap();
        assert!(
            (vals[0] - 5.0).abs() < 1e-6
                && (vals[1] - 4.0).abs() < 1e-6
                && (vals[2] - 3.0).abs() < 1e-6,
            "{vals:?}"
        );
        assert!(v[0][0].abs() > 0.999 && v[1][2].abs() > 0.999 && v[2][4].abs() > 0.999);
    }

    #[test]
    fn deflation_skips_a_given_vector() {
        let diag = [5.0, 1.0, 4.0];
        let e0 = vec![1.0, 0.0, 0.0];
        let (v, vals) = top_eigenvectors(3, 1, 200, 2, &[e0], &|| false, |x, y| {
            for i in 0..3 {
                y[i] = diag[i] * x[i];
            }
        })
        .unwrap();
        assert!((vals[0] - 4.0).abs() < 1e-6);
        assert!(v[0][2].abs() > 0.999);
    }
}
