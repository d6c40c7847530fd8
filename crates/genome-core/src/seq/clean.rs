//! Reads in, clean reads out: the alphabet checked (IUPAC, any case, `U` read as `T`), primers
//! or adapters trimmed (IUPAC-aware, with mismatches), length and ambiguity filters, then
//! identical reads merged with their counts. Every read either comes out, with what was changed
//! in it said, or is dropped with its reason: nothing is altered silently.

use std::collections::HashMap;

use super::{bases_of, revcomp_seq};

/// What to do with the reads.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanOptions {
    /// Shortest and longest read kept, after trimming (bases).
    pub min_len: usize,
    pub max_len: usize,
    /// Most ambiguous bases (any IUPAC code but A, C, G, T) kept, as a share of the length.
    pub max_ambiguous: f64,
    /// Forward primers (5' -> 3', as ordered): the read is cut after the best match near its 5'
    /// end. Reverse primers, as ordered (on the other strand): cut before the best match of
    /// their reverse complement near the 3' end.
    pub forward_primers: Vec<Vec<u8>>,
    pub reverse_primers: Vec<Vec<u8>>,
    /// Most mismatches in a primer match; where the primer may start (bases from its end).
    pub max_mismatches: usize,
    pub primer_window: usize,
    /// Drop a read where a given primer is not found (else keep it untrimmed, said so).
    pub require_primers: bool,
    /// Merge identical reads (after cleaning) with their counts.
    pub dereplicate: bool,
}

impl Default for CleanOptions {
    fn default() -> Self {
        Self {
            min_len: 50,
            max_len: 100_000,
            max_ambiguous: 0.01,
            forward_primers: vec![],
            reverse_primers: vec![],
            max_mismatches: 2,
            primer_window: 50,
            require_primers: false,
            dereplicate: true,
        }
    }
}

/// Why a read was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dropped {
    /// NULL in the input.
    Null,
    /// Nothing but whitespace.
    Empty,
    /// Starts with '>' (a FASTA header pasted as a sequence).
    FastaHeader,
    /// A byte that is not an IUPAC nucleotide code, at this 0-based position of the input.
    BadCharacter {
        position: usize,
        character: char,
    },
    /// A given primer was not found (with `require_primers`).
    NoPrimer,
    TooShort,
    TooLong,
    TooAmbiguous,
}

impl Dropped {
    /// The reason's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Dropped::Null => "null",
            Dropped::Empty => "empty",
            Dropped::FastaHeader => "fasta_header",
            Dropped::BadCharacter { .. } => "not_dna",
            Dropped::NoPrimer => "no_primer",
            Dropped::TooShort => "too_short",
            Dropped::TooLong => "too_long",
            Dropped::TooAmbiguous => "too_ambiguous",
        }
    }
}

/// What cleaning changed in a read that was kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub lower_case: bool,
    pub rna: bool,
    pub whitespace: bool,
    /// Bases cut from the 5' and the 3' end by primer trimming.
    pub trimmed_5: usize,
    pub trimmed_3: usize,
    /// Primers given but not found (kept untrimmed at that end).
    pub primer_missing: bool,
}

/// One read after cleaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub seq: Vec<u8>,
    pub changes: Changes,
    pub ambiguous: usize,
}

/// Clean one read. The work on a pathological input is bounded: a read longer than `max_len`
/// plus both primer windows and the longest primer is dropped as too long as soon as that many
/// bases have been read, without copying the rest.
pub fn clean_one(raw: Option<&str>, o: &CleanOptions) -> Result<Read, Dropped> {
    let raw = raw.ok_or(Dropped::Null)?;
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Dropped::Empty);
    }
    if trimmed.starts_with('>') {
        return Err(Dropped::FastaHeader);
    }
    let bound = o.max_len + 2 * (o.primer_window + o.longest_primer());
    let mut ch = Changes::default();
    let mut seq = Vec::with_capacity(raw.len().min(bound + 1));
    for (i, b) in raw.bytes().enumerate() {
        if b.is_ascii_whitespace() {
            ch.whitespace |= i >= raw.len() - raw.trim_start().len() && i < raw.trim_end().len();
            continue;
        }
        let mut u = b.to_ascii_uppercase();
        ch.lower_case |= u != b;
        if u == b'U' {
            ch.rna = true;
            u = b'T';
        }
        if bases_of(u) == 0 {
            let character = raw[i..].chars().next().unwrap_or('?');
            return Err(Dropped::BadCharacter {
                position: i,
                character,
            });
        }
        if seq.len() == bound {
            return Err(Dropped::TooLong);
        }
        seq.push(u);
    }
    let (mut from, mut to) = (0, seq.len());
    if !o.forward_primers.is_empty() {
        match o
            .forward_primers
            .iter()
            .filter_map(|p| find_primer(&seq, p, o.max_mismatches, o.primer_window, false))
            .min_by_key(|(mm, at)| (*mm, *at))
        {
            Some((_, end)) => from = end,
            None if o.require_primers => return Err(Dropped::NoPrimer),
            None => ch.primer_missing = true,
        }
    }
    if !o.reverse_primers.is_empty() {
        let rcs: Vec<Vec<u8>> = o.reverse_primers.iter().map(|p| revcomp_seq(p)).collect();
        match rcs
            .iter()
            .filter_map(|p| find_primer(&seq[from..], p, o.max_mismatches, o.primer_window, true))
            .min_by_key(|(mm, at)| (*mm, std::cmp::Reverse(*at)))
        {
            Some((_, start)) => to = from + start,
            None if o.require_primers => return Err(Dropped::NoPrimer),
            None => ch.primer_missing = true,
        }
    }
    ch.trimmed_5 = from;
    ch.trimmed_3 = seq.len() - to;
    let seq = seq[from..to].to_vec();
    if seq.len() < o.min_len {
        return Err(Dropped::TooShort);
    }
    if seq.len() > o.max_len {
        return Err(Dropped::TooLong);
    }
    let ambiguous = seq
        .iter()
        .filter(|b| bases_of(**b).count_ones() > 1)
        .count();
    if ambiguous as f64 > o.max_ambiguous * seq.len() as f64 {
        return Err(Dropped::TooAmbiguous);
    }
    Ok(Read {
        seq,
        changes: ch,
        ambiguous,
    })
}

impl CleanOptions {
    fn longest_primer(&self) -> usize {
        self.forward_primers
            .iter()
            .chain(&self.reverse_primers)
            .map(Vec::len)
            .max()
            .unwrap_or(0)
    }
}

/// The best match of `primer` in `seq` with at most `max_mm` mismatches (IUPAC codes match
/// where the bases they stand for meet), starting within `window` bases of the 5' end (or, with
/// `at_3`, ending within `window` bases of the 3' end). Returns (mismatches, position): the end
/// of the match for a 5' primer (cut before it), its start for a 3' one (cut from it). Ties: the
/// match nearest the end it is searched from.
pub fn find_primer(
    seq: &[u8],
    primer: &[u8],
    max_mm: usize,
    window: usize,
    at_3: bool,
) -> Option<(usize, usize)> {
    let p = primer.len();
    if p == 0 || seq.len() < p {
        return None;
    }
    let last = seq.len() - p;
    let starts: Vec<usize> = if at_3 {
        (last.saturating_sub(window)..=last).rev().collect()
    } else {
        (0..=last.min(window)).collect()
    };
    let mut best: Option<(usize, usize)> = None;
    for s in starts {
        let mut mm = 0;
        for (a, b) in seq[s..s + p].iter().zip(primer) {
            if bases_of(*a) & bases_of(*b) == 0 {
                mm += 1;
                if mm > max_mm {
                    break;
                }
            }
        }
        if mm <= max_mm && best.is_none_or(|(m, _)| mm < m) {
            best = Some((mm, if at_3 { s } else { s + p }));
            if mm == 0 {
                break;
            }
        }
    }
    best
}

/// A unique clean sequence and the inputs it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unique {
    pub seq: Vec<u8>,
    /// The inputs' positions (0-based), in input order; their multiplicities summed in `count`.
    pub members: Vec<usize>,
    pub count: u64,
    pub ambiguous: usize,
}

/// What cleaning a batch did: the reads kept (merged when dereplicating), each input's
/// changes, the dropped inputs with their reasons and the counts.
#[derive(Debug, Clone, Default)]
pub struct CleanPlan {
    pub kept: Vec<Unique>,
    /// Per kept input (by position): what was changed.
    pub changes: Vec<(usize, Changes)>,
    pub dropped: Vec<(usize, Dropped)>,
    pub report: Report,
}

/// Counts for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub input: u64,
    pub kept: u64,
    pub unique: u64,
    /// Dropped reads by reason name, in a fixed order.
    pub dropped: Vec<(&'static str, u64)>,
    pub lower_case: u64,
    pub rna: u64,
    pub whitespace: u64,
    pub trimmed: u64,
    pub primer_missing: u64,
}

/// Clean a batch of reads, each with its multiplicity (1 for a plain list).
pub fn clean(reads: &[(Option<&str>, u64)], o: &CleanOptions) -> CleanPlan {
    let mut plan = CleanPlan::default();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut dropped: std::collections::BTreeMap<Dropped, u64> = Default::default();
    let mut by_name: Vec<(&'static str, u64)> = [
        "null",
        "empty",
        "fasta_header",
        "not_dna",
        "no_primer",
        "too_short",
        "too_long",
        "too_ambiguous",
    ]
    .iter()
    .map(|n| (*n, 0))
    .collect();
    for (i, (raw, n)) in reads.iter().enumerate() {
        let n = (*n).max(1);
        plan.report.input += n;
        match clean_one(*raw, o) {
            Err(d) => {
                if let Some(e) = by_name.iter_mut().find(|(k, _)| *k == d.name()) {
                    e.1 += n;
                }
                *dropped.entry(d.clone()).or_default() += n;
                plan.dropped.push((i, d));
            }
            Ok(r) => {
                let c = &r.changes;
                let rep = &mut plan.report;
                rep.kept += n;
                rep.lower_case += n * c.lower_case as u64;
                rep.rna += n * c.rna as u64;
                rep.whitespace += n * c.whitespace as u64;
                rep.trimmed += n * (c.trimmed_5 + c.trimmed_3 > 0) as u64;
                rep.primer_missing += n * c.primer_missing as u64;
                plan.changes.push((i, r.changes.clone()));
                let slot = if o.dereplicate {
                    index.get(&r.seq).copied()
                } else {
                    None
                };
                match slot {
                    Some(k) => {
                        plan.kept[k].members.push(i);
                        plan.kept[k].count += n;
                    }
                    None => {
                        if o.dereplicate {
                            index.insert(r.seq.clone(), plan.kept.len());
                        }
                        plan.kept.push(Unique {
                            seq: r.seq,
                            members: vec![i],
                            count: n,
                            ambiguous: r.ambiguous,
                        });
                    }
                }
            }
        }
    }
    plan.report.unique = plan.kept.len() as u64;
    plan.report.dropped = by_name;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> CleanOptions {
        CleanOptions {
            min_len: 4,
            ..Default::default()
        }
    }

    #[test]
    fn the_alphabet_is_checked_and_every_change_is_said() {
        let o = opts();
        let r = clean_one(Some("acgu UUag"), &o).unwrap();
        assert_eq!(r.seq, b"ACGTTTAG".to_vec());
        assert!(r.changes.lower_case && r.changes.rna && r.changes.whitespace);
        let r = clean_one(Some("  ACGTACGT\n"), &o).unwrap();
        assert_eq!(
            r.changes,
            Changes::default(),
            "surrounding whitespace is not a change"
        );
        assert_eq!(clean_one(None, &o), Err(Dropped::Null));
        assert_eq!(clean_one(Some(" \n"), &o), Err(Dropped::Empty));
        assert_eq!(
            clean_one(Some(">S000 Bacillus"), &o),
            Err(Dropped::FastaHeader)
        );
        assert_eq!(
            clean_one(Some("ACGTXACGT"), &o),
            Err(Dropped::BadCharacter {
                position: 4,
                character: 'X'
            })
        );
        assert_eq!(
            clean_one(Some("ACG-TACGT"), &o),
            Err(Dropped::BadCharacter {
                position: 3,
                character: '-'
            })
        );
        assert_eq!(
            clean_one(Some("ACGTé"), &o),
            Err(Dropped::BadCharacter {
                position: 4,
                character: 'é'
            })
        );
        assert_eq!(clean_one(Some("ACG"), &o), Err(Dropped::TooShort));
        let long = "A".repeat(o.max_len + 1);
        assert_eq!(clean_one(Some(&long), &o), Err(Dropped::TooLong));
        // a huge input stops at the bound instead of being copied whole
        let huge = "C".repeat(10 << 20);
        assert_eq!(clean_one(Some(&huge), &o), Err(Dropped::TooLong));
        // ambiguity: 1 N in 100 is allowed at 1%, 2 are not
        let one = format!("N{}", "A".repeat(99));
        assert_eq!(clean_one(Some(&one), &o).unwrap().ambiguous, 1);
        let two = format!("NR{}", "A".repeat(98));
        assert_eq!(clean_one(Some(&two), &o), Err(Dropped::TooAmbiguous));
    }

    #[test]
    fn primers_are_found_with_mismatches_and_iupac_codes() {
        // 515F-like forward primer with a degenerate base, reverse primer on the other strand
        let fwd = b"GTGYCAGCMGCC".to_vec();
        let rev = b"GGACTACHVGGG".to_vec();
        let insert = "ACGTTGCATTGACCAGTAAC";
        let rc_rev = String::from_utf8(revcomp_seq(b"GGACTACAAGGG")).unwrap();
        let read = format!("NNAT{}{}{}TTAC", "GTGTCAGCAGCC", insert, rc_rev);
        let o = CleanOptions {
            min_len: 4,
            forward_primers: vec![fwd.clone()],
            reverse_primers: vec![rev.clone()],
            max_ambiguous: 0.2,
            ..Default::default()
        };
        let r = clean_one(Some(&read), &o).unwrap();
        assert_eq!(String::from_utf8(r.seq).unwrap(), insert);
        assert_eq!((r.changes.trimmed_5, r.changes.trimmed_3), (16, 12 + 4));
        // two mismatches in the forward primer still match, three do not
        let two = format!("{}{}", "GAGTCTGCAGCC", insert);
        assert_eq!(
            find_primer(two.as_bytes(), &fwd, 2, 10, false),
            Some((2, 12))
        );
        let three = format!("{}{}", "GAGTCTGCAGGC", insert);
        assert_eq!(find_primer(three.as_bytes(), &fwd, 2, 10, false), None);
        // not found: kept untrimmed and said so, or dropped when primers are required
        let r = clean_one(Some(insert), &o).unwrap();
        assert!(r.changes.primer_missing && r.changes.trimmed_5 == 0);
        let req = CleanOptions {
            require_primers: true,
            ..o.clone()
        };
        assert_eq!(clean_one(Some(insert), &req), Err(Dropped::NoPrimer));
        // outside the window: not found
        let far = format!("{}{}{}", "A".repeat(60), "GTGTCAGCAGCC", insert);
        assert_eq!(find_primer(far.as_bytes(), &fwd, 0, 50, false), None);
        assert_eq!(
            find_primer(far.as_bytes(), &fwd, 0, 60, false),
            Some((0, 72))
        );
    }

    #[test]
    fn identical_reads_are_merged_with_their_counts_and_drops_are_counted() {
        let o = opts();
        let reads = [
            (Some("ACGTACGT"), 1),
            (Some("acgtacgt"), 2),
            (None, 1),
            (Some("ACGTAAAA"), 1),
            (Some("ACGUACGU"), 3),
            (Some("XX"), 1),
        ];
        let plan = clean(&reads, &o);
        assert_eq!(plan.kept.len(), 2);
        assert_eq!(plan.kept[0].seq, b"ACGTACGT".to_vec());
        assert_eq!(plan.kept[0].members, vec![0, 1, 4]);
        assert_eq!(plan.kept[0].count, 6);
        assert_eq!(plan.kept[1].count, 1);
        let r = &plan.report;
        assert_eq!((r.input, r.kept, r.unique), (9, 7, 2));
        assert_eq!((r.lower_case, r.rna), (2, 3));
        let d: HashMap<_, _> = r.dropped.iter().copied().collect();
        assert_eq!((d["null"], d["not_dna"], d["too_short"]), (1, 1, 0));
        assert_eq!(r.input, r.kept + r.dropped.iter().map(|x| x.1).sum::<u64>());
        assert_eq!(
            plan.dropped.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![2, 5]
        );
        // without dereplication every kept input is its own row
        let plain = clean(
            &reads,
            &CleanOptions {
                dereplicate: false,
                ..o
            },
        );
        assert_eq!(plain.kept.len(), 4);
    }
}
