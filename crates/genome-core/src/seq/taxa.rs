//! Labelled sequences: FASTA records, RDP-style lineages ("Bacteria; Firmicutes; ...", top rank
//! first) and the seeded splits the classifier is trained, tuned and checked on.
//!
//! Taxon names are not unique across ranks (`Actinobacteria` is a phylum and a class) nor within
//! a rank (`Incertae Sedis XI` is a family under two orders), so a taxon is keyed by its full
//! path ([`Lineage::key`]), never by its name.

use std::collections::{BTreeMap, BTreeSet};

/// One FASTA record: the id (the header's first whitespace-separated token), the rest of the
/// header, and the sequence lines joined as they are (cleaning is [`super::clean`]'s job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub description: String,
    pub seq: String,
}

/// Parse FASTA text. Blank lines are skipped; text before the first header is an error (a
/// sequence without a name), as is a header with no id.
pub fn parse_fasta(text: &str) -> Result<Vec<Record>, String> {
    let mut out: Vec<Record> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if let Some(h) = line.strip_prefix('>') {
            let h = h.trim_start();
            let (id, rest) = h.split_once(char::is_whitespace).unwrap_or((h, ""));
            if id.is_empty() {
                return Err(format!("line {}: a FASTA header without an id", n + 1));
            }
            out.push(Record {
                id: id.to_string(),
                description: rest.trim().to_string(),
                seq: String::new(),
            });
        } else if !line.trim().is_empty() {
            match out.last_mut() {
                Some(r) => r.seq.push_str(line.trim()),
                None => {
                    return Err(format!(
                        "line {}: sequence data before the first '>' header",
                        n + 1
                    ))
                }
            }
        }
    }
    Ok(out)
}

/// A lineage, top rank first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lineage(pub Vec<String>);

impl Lineage {
    /// Split on `sep` (`;` in RDP style), names trimmed; empty trailing names are dropped, an
    /// empty name inside is kept as it is (a rank left blank).
    pub fn parse(s: &str, sep: char) -> Lineage {
        let mut v: Vec<String> = s.split(sep).map(|x| x.trim().to_string()).collect();
        while v.last().is_some_and(|x| x.is_empty()) {
            v.pop();
        }
        Lineage(v)
    }

    /// The taxon at `depth` (0 = top rank), keyed by its path: None past the lineage's end.
    pub fn key(&self, depth: usize) -> Option<String> {
        (depth < self.0.len()).then(|| self.0[..=depth].join(";"))
    }
}

/// Which records go where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
    /// Whole genera held out, each with its family kept in `train`.
    pub novel: Vec<usize>,
}

/// A seeded split by genus. First whole genera are set apart as `novel` (about `novel_share` of
/// the genera that have a sibling genus in the same family, so the family stays known; never
/// more than all but one genus of a family), then each remaining genus with two or more records
/// gives about `test_share` of them to `test` (at least one stays in `train`; a genus with one
/// record is trained on). Records whose lineage is shorter than `genus_depth + 1` are trained
/// on. The same seed gives the same split.
pub fn split_by_genus(
    lineages: &[Lineage],
    genus_depth: usize,
    test_share: f64,
    novel_share: f64,
    seed: u64,
) -> Split {
    let family_depth = genus_depth.saturating_sub(1);
    let mut genera: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut split = Split::default();
    for (i, l) in lineages.iter().enumerate() {
        match l.key(genus_depth) {
            Some(g) => genera.entry(g).or_default().push(i),
            None => split.train.push(i),
        }
    }
    // genera by family, in a seeded order
    let mut families: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for (g, members) in &genera {
        let f = lineages[members[0]].key(family_depth).unwrap_or_default();
        families.entry(f).or_default().push(g);
    }
    let mut novel: BTreeSet<&String> = BTreeSet::new();
    let eligible: Vec<(&String, usize)> = families
        .values()
        .filter(|gs| gs.len() > 1)
        .flat_map(|gs| gs.iter().map(move |g| (*g, gs.len())))
        .collect();
    let want = (eligible.len() as f64 * novel_share).round() as usize;
    let mut order: Vec<&String> = eligible.iter().map(|(g, _)| *g).collect();
    order.sort_by_key(|g| (draw(seed, g), (*g).clone()));
    let mut held_per_family: BTreeMap<String, usize> = BTreeMap::new();
    for g in order {
        if novel.len() >= want {
            break;
        }
        let f = lineages[genera[g][0]].key(family_depth).unwrap_or_default();
        let held = held_per_family.entry(f.clone()).or_default();
        if *held + 1 < families[&f].len() {
            *held += 1;
            novel.insert(g);
        }
    }
    for (g, members) in &genera {
        if novel.contains(g) {
            split.novel.extend(members);
            continue;
        }
        let mut m = members.clone();
        m.sort_by_key(|i| (draw(seed ^ 0x5eed, &i.to_string()), *i));
        let n_test = if m.len() < 2 {
            0
        } else {
            ((m.len() as f64 * test_share).round() as usize).clamp(0, m.len() - 1)
        };
        split.test.extend(&m[..n_test]);
        split.train.extend(&m[n_test..]);
    }
    split.train.sort_unstable();
    split.test.sort_unstable();
    split.novel.sort_unstable();
    split
}

/// A seeded draw for a name: FNV-1a of the name, mixed with the seed (stable across Rust
/// versions, unlike the standard library's hasher).
fn draw(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    super::mix(h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fasta_records_are_parsed_with_ids_and_joined_lines() {
        let text = ">S000005078 Geobacillus thermocatenulatus (T)\tBacteria; Firmicutes\nacgt\nACGN\r\n\n>7000004128189528\nTTTT\n";
        let r = parse_fasta(text).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].id, "S000005078");
        assert_eq!(r[0].seq, "acgtACGN");
        assert!(r[0].description.ends_with("Bacteria; Firmicutes"));
        assert_eq!(
            (
                r[1].id.as_str(),
                r[1].description.as_str(),
                r[1].seq.as_str()
            ),
            ("7000004128189528", "", "TTTT")
        );
        assert!(parse_fasta("ACGT\n>x\nA").unwrap_err().contains("line 1"));
        assert!(parse_fasta(">\nACGT")
            .unwrap_err()
            .contains("without an id"));
        assert_eq!(parse_fasta("").unwrap(), vec![]);
    }

    #[test]
    fn taxa_are_keyed_by_their_path_not_their_name() {
        let a = Lineage::parse(
            "Bacteria; Actinobacteria; Actinobacteria; Actinomycetales;",
            ';',
        );
        assert_eq!(a.0.len(), 4);
        assert_ne!(
            a.key(1),
            a.key(2),
            "the phylum and the class of the same name differ"
        );
        assert_eq!(a.key(1).unwrap(), "Bacteria;Actinobacteria");
        assert_eq!(a.key(4), None);
        let x = Lineage::parse("B;P;C;O1;Incertae Sedis XI;G", ';');
        let y = Lineage::parse("B;P;C;O2;Incertae Sedis XI;G", ';');
        assert_ne!(x.key(4), y.key(4));
    }

    fn corpus() -> Vec<Lineage> {
        // 12 families of 1-4 genera, genera of 1-6 records
        let mut v = Vec::new();
        for f in 0..12 {
            for g in 0..(1 + f % 4) {
                for _ in 0..(1 + (f + g) % 6) {
                    v.push(Lineage::parse(
                        &format!("Bacteria;P{};C;O;F{f};G{f}_{g}", f % 3),
                        ';',
                    ));
                }
            }
        }
        v.push(Lineage::parse("Bacteria;P0", ';'));
        v
    }

    #[test]
    fn the_split_holds_out_whole_genera_whose_families_stay_known() {
        let l = corpus();
        let s = split_by_genus(&l, 5, 0.2, 0.2, 42);
        // every record exactly once
        let mut all: Vec<usize> = s
            .train
            .iter()
            .chain(&s.test)
            .chain(&s.novel)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..l.len()).collect::<Vec<_>>());
        let genus = |i: &usize| l[*i].key(5);
        let family = |i: &usize| l[*i].key(4);
        let train_genera: BTreeSet<_> = s.train.iter().map(genus).collect();
        let train_families: BTreeSet<_> = s.train.iter().map(family).collect();
        let novel_genera: BTreeSet<_> = s.novel.iter().map(genus).collect();
        assert!(!novel_genera.is_empty());
        for g in &novel_genera {
            assert!(!train_genera.contains(g) && !s.test.iter().any(|i| &genus(i) == g));
        }
        assert!(
            s.novel.iter().all(|i| train_families.contains(&family(i))),
            "families kept"
        );
        assert!(
            s.test.iter().all(|i| train_genera.contains(&genus(i))),
            "test genera are known"
        );
        assert!(!s.test.is_empty());
        // the short lineage is trained on
        assert!(s.train.contains(&(l.len() - 1)));
        // seeded: the same seed, the same split; another seed, another
        assert_eq!(s, split_by_genus(&l, 5, 0.2, 0.2, 42));
        assert_ne!(s, split_by_genus(&l, 5, 0.2, 0.2, 7));
        // no novel share: none held out
        assert!(split_by_genus(&l, 5, 0.2, 0.0, 42).novel.is_empty());
    }
}
