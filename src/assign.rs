//! The 10-minute job, `genome.assign_family`: give rows without a family the family whose
//! centroid is nearest (genome-core's `CentroidSet`), or Unclustered. The centroids are cached
//! per backend until the next full run (`cached_centroids` lists the cache); reading and writing
//! the collection's table is `collections`'.
//!
//! Locking: assign_family holds the collection's advisory lock shared (so several can run
//! together and split rows with SKIP LOCKED) and skips its turn while a full run holds it
//! exclusively. Everything it writes is in the caller's transaction.

use std::cell::RefCell;
use std::collections::HashMap;

use genome_core::cluster::families::CentroidSet;
use pgrx::prelude::*;

use crate::collections::{
    count_pending, embed_and_store, load, lock_pending, try_lock, write_assignments, Collection,
};
use crate::errors::OrRaise;
use crate::families::check_arg;
use crate::progress::Progress;
use crate::vector::Vector;

struct Cached {
    key: (i64, i64),
    set: CentroidSet,
}

thread_local! {
    /// Centroid matrices per collection, valid while (generation, Unclustered id) is unchanged:
    /// every full run bumps the generation; a re-registered collection has a new Unclustered row.
    static CENTROIDS: RefCell<HashMap<String, Cached>> = RefCell::new(HashMap::new());
}

/// Forget this backend's centroids of collection `name` (after a full run changed them).
pub fn invalidate(name: &str) {
    CENTROIDS.with(|c| c.borrow_mut().remove(name));
}

/// Run `f` on the collection's live centroids, read once per (generation, Unclustered id).
fn with_centroids<R>(c: &Collection, f: impl FnOnce(&CentroidSet) -> R) -> R {
    let key = (c.generation, c.unclustered_id);
    let hit = CENTROIDS.with(|m| m.borrow().get(&c.name).is_some_and(|x| x.key == key));
    if !hit {
        let set = live_centroids(c);
        CENTROIDS.with(|m| m.borrow_mut().insert(c.name.clone(), Cached { key, set }));
    }
    CENTROIDS.with(|m| f(&m.borrow()[&c.name].set))
}

/// The collection's live families (not Unclustered): centroids and calibrated thresholds, as
/// this transaction sees them (a full run on a sample reads the families it has just written).
pub fn live_centroids(c: &Collection) -> CentroidSet {
    let mut set = CentroidSet::new(c.dimension);
    Spi::connect(|client| {
        for r in client.select(
            "SELECT id, centroid, coalesce(threshold, 0) FROM genome.families
              WHERE collection = $1 AND NOT is_unclustered AND retired_at IS NULL ORDER BY id",
            None,
            &[c.name.as_str().into()],
        )? {
            let id = r.get::<i64>(1)?.unwrap_or_default();
            let v = r.get::<Vector>(2)?.map(|v| v.0).unwrap_or_default();
            if v.len() == c.dimension {
                set.push(id, &v, r.get::<f32>(3)?.unwrap_or(0.0));
            }
        }
        Ok::<_, pgrx::spi::SpiError>(())
    })
    .or_raise("reading centroids");
    set
}

/// How many processes have loaded centroids for which collections (for tests and health).
#[pg_extern(volatile, parallel_safe)]
pub fn cached_centroids() -> TableIterator<
    'static,
    (
        name!(collection, String),
        name!(generation, i64),
        name!(families, i32),
    ),
> {
    let rows: Vec<_> = CENTROIDS.with(|m| {
        m.borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.key.0, v.set.len() as i32))
            .collect()
    });
    TableIterator::new(rows)
}

/// The 10-minute job: when at least `min_pending` rows have no family, take the oldest
/// `batch_size` of them (rows locked by another call are skipped), embed those without an
/// embedding, and give each the family whose centroid is most similar if the cosine reaches
/// `threshold` (NULL: each family's calibrated threshold), else Unclustered.
#[pg_extern(volatile)]
pub fn assign_family(
    collection: &str,
    batch_size: default!(i32, 500),
    min_pending: default!(i32, 500),
    threshold: default!(Option<f32>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(processed, i64),
        name!(assigned, i64),
        name!(unclustered, i64),
    ),
> {
    check_arg(batch_size >= 1, "batch_size must be at least 1");
    check_arg(min_pending >= 0, "min_pending must not be negative");
    check_arg(
        threshold.is_none_or(|t| (-1.0..=1.0).contains(&t)),
        "threshold must be a cosine between -1 and 1",
    );
    if crate::cluster::distributed(collection) {
        // on a coordinator: every data node assigns its own rows (genome_cluster.assign_family)
        let row = Spi::get_three_with_args::<i64, i64, i64>(
            "SELECT processed, assigned, unclustered FROM genome_cluster.assign_family($1, $2, $3, $4)",
            &[collection.into(), batch_size.into(), min_pending.into(), threshold.into()],
        )
        .or_raise("assigning on the data nodes");
        return TableIterator::once((row.0.unwrap_or(0), row.1.unwrap_or(0), row.2.unwrap_or(0)));
    }
    let c = load(collection);
    let nothing = || TableIterator::once((0i64, 0i64, 0i64));
    if !try_lock(&c.name, true) {
        notice!(
            "pg_genome: assign_family \"{}\": a full classification is running; skipped",
            c.name
        );
        return nothing();
    }
    let live = Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM genome.families WHERE collection = $1 AND NOT is_unclustered AND retired_at IS NULL",
        &[c.name.as_str().into()],
    )
    .or_raise("counting rows")
    .unwrap_or(0);
    if live == 0 {
        notice!(
            "pg_genome: assign_family \"{}\": no families yet; run genome.full_classify first",
            c.name
        );
        return nothing();
    }
    let pending = count_pending(&c, (min_pending as i64).max(batch_size as i64).max(1));
    if pending < min_pending as i64 || pending == 0 {
        return nothing();
    }
    let mut prog = Progress::start("assign_family", &c.name);
    prog.stage("select", pending.min(batch_size as i64));
    let rows = lock_pending(&c, batch_size as i64);
    if rows.is_empty() {
        return nothing();
    }
    // embed the ones that need it
    let need: Vec<usize> = (0..rows.len())
        .filter(|i| rows[*i].embedding.is_none() && rows[*i].text.is_some())
        .collect();
    let mut vecs: Vec<Option<Vec<f32>>> = rows.iter().map(|r| r.embedding.clone()).collect();
    if !need.is_empty() {
        prog.stage("embed", need.len() as i64);
        let ids: Vec<String> = need.iter().map(|i| rows[*i].id.clone()).collect();
        let texts: Vec<String> = need
            .iter()
            .map(|i| rows[*i].text.clone().unwrap_or_default())
            .collect();
        let out = embed_and_store(&c, &ids, &texts, &mut prog, 0);
        for (i, v) in need.iter().zip(out) {
            vecs[*i] = Some(v);
        }
    }
    prog.stage("assign", rows.len() as i64);
    let mut fams = Vec::with_capacity(rows.len());
    let mut counts: HashMap<i64, i64> = HashMap::new();
    with_centroids(&c, |set| {
        for v in &vecs {
            let f = match v {
                Some(v) if v.len() == c.dimension => {
                    set.assign(v, threshold).0.unwrap_or(c.unclustered_id)
                }
                _ => c.unclustered_id,
            };
            *counts.entry(f).or_default() += 1;
            fams.push(f);
        }
    });
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    write_assignments(&c, &ids, &fams, &mut prog);
    // Family sizes, locked in id order so that concurrent calls cannot deadlock.
    let mut fids: Vec<i64> = counts.keys().copied().collect();
    fids.sort_unstable();
    let ns: Vec<i64> = fids.iter().map(|f| counts[f]).collect();
    Spi::run_with_args(
        "WITH l AS (SELECT id FROM genome.families WHERE id = ANY($1) ORDER BY id FOR UPDATE)
         UPDATE genome.families f SET size = f.size + u.n, updated_at = now()
           FROM unnest($1::int8[], $2::int8[]) AS u(id, n), l WHERE f.id = u.id AND l.id = u.id",
        &[fids.into(), ns.into()],
    )
    .or_raise("updating family sizes");
    let unc = counts.get(&c.unclustered_id).copied().unwrap_or(0);
    let processed = rows.len() as i64;
    TableIterator::once((processed, processed - unc, unc))
}
