//! Prioritized experience replay (Schaul et al. 2016, proportional variant) and TD(lambda)
//! targets over a session's steps.
//!
//! The replay buffer stores experience indices (`u32`, into the caller's own table) in a ring
//! of slots; each slot has a priority `(|td_error| + epsilon)^alpha`, kept in three trees over a
//! power-of-two number of leaves (sum for sampling, min for the importance weights' normaliser,
//! max for the priority of new items), so that push, update and each draw are O(log capacity).

use crate::reduce::rng::Rng;

/// Proportional prioritized replay (Schaul et al. 2016) over experience indices, with a sum tree.
#[derive(Clone, Debug)]
pub struct PrioritizedReplay {
    /// Number of slots; past it the oldest slot is overwritten (100 000).
    pub capacity: usize,
    /// Priority exponent: 0 is uniform sampling, 1 fully proportional (0.6).
    pub alpha: f64,
    /// Importance-sampling exponent, annealed towards 1 (0.4).
    pub beta: f64,
    /// Added to beta after each [`PrioritizedReplay::sample`] call, beta capped at 1 (0.001).
    pub beta_increment: f64,
    /// Added to |td_error| so that no slot has priority 0 (0.01).
    pub epsilon: f64,
    items: Vec<u32>,
    next: usize,
    leaves: usize,
    sum: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
}

impl PrioritizedReplay {
    /// An empty buffer of `capacity` slots (positive) with alpha 0.6, beta 0.4, beta increment
    /// 0.001 and epsilon 0.01.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "replay capacity must be positive");
        let leaves = capacity.next_power_of_two();
        PrioritizedReplay {
            capacity,
            alpha: 0.6,
            beta: 0.4,
            beta_increment: 0.001,
            epsilon: 0.01,
            items: Vec::with_capacity(capacity.min(1 << 20)),
            next: 0,
            leaves,
            sum: vec![0.0; 2 * leaves],
            min: vec![f64::INFINITY; 2 * leaves],
            max: vec![0.0; 2 * leaves],
        }
    }

    /// Number of items stored (at most `capacity`).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The stored priority (already raised to alpha) of a slot.
    pub fn priority(&self, slot: usize) -> f64 {
        assert!(slot < self.len(), "replay slot out of range");
        self.sum[self.leaves + slot]
    }

    /// Sum of the stored priorities.
    pub fn total(&self) -> f64 {
        self.sum[1]
    }

    /// Adds an item with the current maximum stored priority (1.0 when empty); at capacity the
    /// oldest slot is overwritten (ring). Slots fill in order 0, 1, ..., capacity - 1, 0, ...
    pub fn push(&mut self, item: u32) {
        let p = if self.is_empty() { 1.0 } else { self.max[1] };
        let slot = self.next;
        if slot == self.items.len() {
            self.items.push(item);
        } else {
            self.items[slot] = item;
        }
        self.set(slot, p);
        self.next = (slot + 1) % self.capacity;
    }

    /// Draws `batch` slots proportionally to priority^alpha (stratified: one uniform draw per
    /// equal segment of the total), returns (slot, item, importance weight) with
    /// w = (N * P(i))^-beta / max_w, then increments beta.
    ///
    /// `max_w` is the weight of the least likely stored item, so weights lie in (0, 1]. Returns
    /// an empty vector (and leaves beta alone) when the buffer is empty or `batch` is 0.
    pub fn sample(&mut self, batch: usize, rng: &mut Rng) -> Vec<(usize, u32, f64)> {
        if self.is_empty() || batch == 0 {
            return Vec::new();
        }
        let total = self.sum[1];
        let p_min = self.min[1];
        let seg = total / batch as f64;
        let out = (0..batch)
            .map(|i| {
                let x = (i as f64 + rng.unit()) * seg;
                let slot = self.find(x);
                let p = self.sum[self.leaves + slot];
                // (N P(i))^-beta / (N P_min)^-beta = (P_min / P(i))^beta
                let w = (p_min / p).powf(self.beta).min(1.0);
                (slot, self.items[slot], w)
            })
            .collect();
        self.beta = (self.beta + self.beta_increment).min(1.0);
        out
    }

    /// priority = (|td_error| + epsilon)^alpha stored per slot.
    ///
    /// A non-finite TD error gets the current maximum priority (so that the item is replayed
    /// rather than lost, and the tree is not poisoned).
    pub fn update(&mut self, slot: usize, td_error: f64) {
        assert!(slot < self.len(), "replay slot out of range");
        let p = if td_error.is_finite() {
            (td_error.abs() + self.epsilon).powf(self.alpha)
        } else {
            self.max[1].max(1.0)
        };
        self.set(slot, p);
    }

    fn set(&mut self, slot: usize, p: f64) {
        let mut i = self.leaves + slot;
        self.sum[i] = p;
        self.min[i] = p;
        self.max[i] = p;
        while i > 1 {
            i /= 2;
            let (l, r) = (2 * i, 2 * i + 1);
            self.sum[i] = self.sum[l] + self.sum[r];
            self.min[i] = self.min[l].min(self.min[r]);
            self.max[i] = self.max[l].max(self.max[r]);
        }
    }

    /// The slot whose cumulative-priority interval holds `x`; never an empty slot, even when
    /// rounding puts x at or past the total.
    fn find(&self, mut x: f64) -> usize {
        let mut i = 1;
        while i < self.leaves {
            let (l, r) = (2 * i, 2 * i + 1);
            if x < self.sum[l] || self.sum[r] <= 0.0 {
                i = l;
            } else {
                x -= self.sum[l];
                i = r;
            }
        }
        i - self.leaves
    }
}

/// TD(lambda) targets over one session's steps in order: rewards r_t and value estimates
/// v_next[t] = V(state at t+1) (the value of the next step's chosen action under the current
/// model; ignored for the last step). lambda-return: G_{T-1} = r_{T-1};
/// G_t = r_t + gamma * ((1 - lambda) * v_next[t] + lambda * G_{t+1}). A single-step session's
/// target is its reward.
///
/// `v_next` has one value per step, or one fewer (the last, ignored, may be left out).
pub fn td_lambda_targets(rewards: &[f64], v_next: &[f64], gamma: f64, lambda: f64) -> Vec<f64> {
    let t = rewards.len();
    if t == 0 {
        return Vec::new();
    }
    assert!(
        v_next.len() + 1 >= t,
        "td_lambda_targets: need a next-state value for every step but the last"
    );
    let mut g = vec![0f64; t];
    g[t - 1] = rewards[t - 1];
    for i in (0..t - 1).rev() {
        g[i] = rewards[i] + gamma * ((1.0 - lambda) * v_next[i] + lambda * g[i + 1]);
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(r: &mut PrioritizedReplay, draws: usize, batch: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        let mut c = vec![0f64; r.len()];
        for _ in 0..draws / batch {
            for (slot, item, _) in r.sample(batch, &mut rng) {
                assert_eq!(item, 100 + slot as u32);
                c[slot] += 1.0;
            }
        }
        c
    }

    fn chi_square(counts: &[f64], expected_p: &[f64]) -> f64 {
        let n: f64 = counts.iter().sum();
        counts
            .iter()
            .zip(expected_p)
            .map(|(o, p)| (o - n * p).powi(2) / (n * p))
            .sum()
    }

    fn filled(n: usize, cap: usize, td: &[f64]) -> PrioritizedReplay {
        let mut r = PrioritizedReplay::new(cap);
        for i in 0..n {
            r.push(100 + i as u32);
        }
        for (s, e) in td.iter().enumerate() {
            r.update(s, *e);
        }
        r
    }

    #[test]
    fn frequencies_proportional_to_priority_alpha() {
        // 7 items (not a power of two), very different TD errors
        let td = [0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 0.02];
        let mut r = filled(7, 10, &td);
        let pr: Vec<f64> = td.iter().map(|e| (e + 0.01f64).powf(0.6)).collect();
        let tot: f64 = pr.iter().sum();
        let expect: Vec<f64> = pr.iter().map(|p| p / tot).collect();
        for (s, p) in pr.iter().enumerate() {
            assert!((r.priority(s) - p).abs() < 1e-12);
        }
        assert!((r.total() - tot).abs() < 1e-9);
        for batch in [1, 32] {
            let c = counts(&mut r, 200_000, batch, 7 + batch as u64);
            let x2 = chi_square(&c, &expect);
            // 6 degrees of freedom: P(chi2 > 22.46) = 0.001
            assert!(x2 < 22.46, "batch {batch}: chi2 {x2}, counts {c:?}");
        }
        // alpha = 0 is uniform
        let mut u = filled(7, 10, &[]);
        u.alpha = 0.0;
        for (s, e) in td.iter().enumerate() {
            u.update(s, *e);
        }
        let c = counts(&mut u, 70_000, 16, 3);
        assert!(chi_square(&c, &[1.0 / 7.0; 7]) < 22.46, "{c:?}");
    }

    #[test]
    fn weights_max_one_and_inverse_to_priority() {
        let td = [0.05, 3.0, 0.5, 1.0];
        let mut r = filled(4, 8, &td);
        let mut rng = Rng::new(1);
        let beta = r.beta;
        let batch = r.sample(400, &mut rng);
        let mut w_of = [f64::NAN; 4];
        for (slot, _, w) in &batch {
            assert!(*w > 0.0 && *w <= 1.0);
            w_of[*slot] = *w;
        }
        assert!(w_of.iter().all(|w| w.is_finite()), "every slot drawn");
        // the least likely item has weight exactly 1; order is the reverse of priority
        assert_eq!(w_of[0], 1.0);
        assert!(w_of[0] > w_of[2] && w_of[2] > w_of[3] && w_of[3] > w_of[1]);
        // w = (N P(i))^-beta / max_w, by hand
        let pr: Vec<f64> = td.iter().map(|e| (e + 0.01f64).powf(0.6)).collect();
        let tot: f64 = pr.iter().sum();
        let raw: Vec<f64> = pr.iter().map(|p| (4.0 * p / tot).powf(-beta)).collect();
        let max_w = raw.iter().cloned().fold(0.0, f64::max);
        for s in 0..4 {
            assert!((w_of[s] - raw[s] / max_w).abs() < 1e-12);
        }
    }

    #[test]
    fn beta_anneals_to_one_and_stops() {
        let mut r = filled(3, 3, &[]);
        let mut rng = Rng::new(2);
        r.sample(4, &mut rng);
        assert!((r.beta - 0.401).abs() < 1e-12);
        for _ in 0..599 {
            r.sample(1, &mut rng);
        }
        assert!((r.beta - 1.0).abs() < 1e-9 && r.beta <= 1.0);
        for _ in 0..50 {
            r.sample(1, &mut rng);
        }
        assert_eq!(r.beta, 1.0);
        // at beta 1 the weights are exactly p_min / p
        r.update(0, 0.0);
        r.update(1, 1.0);
        r.update(2, 3.0);
        let p: Vec<f64> = (0..3).map(|s| r.priority(s)).collect();
        for (slot, _, w) in r.sample(50, &mut rng) {
            assert!((w - p[0] / p[slot]).abs() < 1e-12);
        }
        // an empty buffer draws nothing and keeps beta
        let mut e = PrioritizedReplay::new(5);
        assert!(e.is_empty() && e.sample(8, &mut rng).is_empty());
        assert_eq!(e.beta, 0.4);
    }

    #[test]
    fn ring_overwrites_the_oldest_and_push_uses_max_priority() {
        let mut r = PrioritizedReplay::new(3);
        r.push(1);
        assert_eq!(r.priority(0), 1.0);
        r.push(2);
        r.update(0, 4.0);
        r.update(1, 0.0);
        let top = (4.01f64).powf(0.6);
        r.push(3);
        assert_eq!(r.len(), 3);
        assert!((r.priority(2) - top).abs() < 1e-12, "new item gets the max");
        r.push(4); // overwrites slot 0 (item 1)
        r.push(5); // overwrites slot 1 (item 2)
        assert_eq!(r.len(), 3);
        let mut rng = Rng::new(3);
        let mut seen: Vec<(usize, u32)> = r
            .sample(300, &mut rng)
            .into_iter()
            .map(|(s, i, _)| (s, i))
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, vec![(0, 4), (1, 5), (2, 3)]);
        // total is exact after overwrites (no drift from incremental updates)
        let want: f64 = (0..3).map(|s| r.priority(s)).sum();
        assert!((r.total() - want).abs() < 1e-12);
        // non-finite TD errors do not poison the tree
        r.update(1, f64::NAN);
        assert!(r.total().is_finite() && r.priority(1) > 0.0);
    }

    #[test]
    fn update_changes_frequencies() {
        let mut r = filled(4, 4, &[1.0, 1.0, 1.0, 1.0]);
        let c = counts(&mut r, 40_000, 8, 5);
        assert!(chi_square(&c, &[0.25; 4]) < 16.27, "{c:?}");
        r.update(3, 20.0);
        let c = counts(&mut r, 40_000, 8, 6);
        let pr: Vec<f64> = [1.0, 1.0, 1.0, 20.0]
            .iter()
            .map(|e| (e + 0.01f64).powf(0.6))
            .collect();
        let tot: f64 = pr.iter().sum();
        let expect: Vec<f64> = pr.iter().map(|p| p / tot).collect();
        assert!(c[3] > 2.0 * c[0], "{c:?}");
        // 3 degrees of freedom: P(chi2 > 16.27) = 0.001
        assert!(chi_square(&c, &expect) < 16.27, "{c:?}");
    }

    #[test]
    fn td_lambda_hand_computed() {
        let r = [0.0, 0.5, 1.0];
        let v = [0.6, 0.8, 123.0];
        let (g, l): (f64, f64) = (0.99, 0.95);
        let g2: f64 = 1.0;
        let g1 = 0.5 + g * ((1.0 - l) * 0.8 + l * g2); // 0.5 + 0.99 * (0.04 + 0.95) = 1.4801
        let g0 = 0.0 + g * ((1.0 - l) * 0.6 + l * g1); // 0.99 * (0.03 + 1.406095) = 1.42173405
        assert!((g1 - 1.4801).abs() < 1e-12 && (g0 - 1.421_734_05).abs() < 1e-12);
        let t = td_lambda_targets(&r, &v, g, l);
        assert_eq!(t.len(), 3);
        for (a, b) in t.iter().zip([g0, g1, g2]) {
            assert!((a - b).abs() < 1e-12, "{t:?}");
        }
        // the last value is ignored and may be left out
        assert_eq!(td_lambda_targets(&r, &v[..2], g, l), t);
        // lambda = 0: one-step TD
        let t0 = td_lambda_targets(&r, &v, g, 0.0);
        assert!((t0[0] - 0.99 * 0.6).abs() < 1e-12);
        assert!((t0[1] - (0.5 + 0.99 * 0.8)).abs() < 1e-12);
        assert_eq!(t0[2], 1.0);
        // lambda = 1: discounted Monte-Carlo return, values ignored
        let t1 = td_lambda_targets(&r, &v, g, 1.0);
        assert!((t1[0] - (0.0 + 0.99 * 0.5 + 0.99 * 0.99 * 1.0)).abs() < 1e-12);
        assert!((t1[1] - (0.5 + 0.99)).abs() < 1e-12);
        // single step = its reward, whatever the value
        assert_eq!(td_lambda_targets(&[0.7], &[5.0], g, l), vec![0.7]);
        assert_eq!(td_lambda_targets(&[0.7], &[], g, l), vec![0.7]);
        assert!(td_lambda_targets(&[], &[], g, l).is_empty());
    }
}
