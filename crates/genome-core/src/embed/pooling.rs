//! Pooling token vectors into sentence vectors (L2 normalisation is `base`'s).

use ndarray::{ArrayView2, ArrayView3};

/// Mean of the token vectors whose mask is non-zero, as sentence-transformers computes it
/// (sum of masked vectors divided by max(mask sum, 1e-9)).
pub fn mean_pool(hidden: ArrayView3<f32>, mask: ArrayView2<i64>) -> Vec<Vec<f32>> {
    let (batch, seq, dim) = hidden.dim();
    let mut out = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut acc = vec![0f32; dim];
        let mut count = 0f32;
        for t in 0..seq {
            if mask[[b, t]] != 0 {
                count += 1.0;
                for (a, v) in acc
                    .iter_mut()
                    .zip(hidden.slice(ndarray::s![b, t, ..]).iter())
                {
                    *a += *v;
                }
            }
        }
        let denom = count.max(1e-9);
        acc.iter_mut().for_each(|a| *a /= denom);
        out.push(acc);
    }
    out
}

/// The first token's vector ([CLS] for BERT-style models).
pub fn cls_pool(hidden: ArrayView3<f32>) -> Vec<Vec<f32>> {
    (0..hidden.dim().0)
        .map(|b| hidden.slice(ndarray::s![b, 0, ..]).to_vec())
        .collect()
}

/// L2 normalisation lives in `base`; re-exported under its old path (the pgrx layer uses it).
pub use crate::base::l2_normalize;

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

    #[test]
    fn mean_pool_ignores_padding() {
        // batch 2, seq 3, dim 2; second row has one padding token
        let h = Array3::from_shape_vec(
            (2, 3, 2),
            vec![1., 2., 3., 4., 5., 6., 10., 20., 30., 40., 1000., 1000.],
        )
        .unwrap();
        let m = array![[1i64, 1, 1], [1, 1, 0]];
        let p = mean_pool(h.view(), m.view());
        assert_eq!(p[0], vec![3., 4.]);
        assert_eq!(p[1], vec![20., 30.]);
    }

    #[test]
    fn mean_pool_all_masked_gives_zero_not_nan() {
        let h = Array3::from_elem((1, 2, 3), 5f32);
        let m = array![[0i64, 0]];
        let p = mean_pool(h.view(), m.view());
        assert_eq!(p[0], vec![0., 0., 0.]);
    }

    #[test]
    fn cls_takes_first_token() {
        let h = Array3::from_shape_vec((1, 2, 2), vec![7., 8., 9., 10.]).unwrap();
        assert_eq!(cls_pool(h.view()), vec![vec![7., 8.]]);
    }
}
