//! DNA sequences (eDNA): reads cleaned and dereplicated ([`clean`]), k-mer featurisers
//! ([`kmer`]), FASTA records, lineages and seeded splits by genus ([`taxa`]). Plain Rust, no
//! PostgreSQL; the pgrx layer reads and writes the rows. It imports [`crate::base`] only.
//!
//! Bases are the IUPAC nucleotide codes, upper-cased, `U` read as `T`; the four unambiguous
//! bases are coded in two bits (A 0, C 1, G 2, T 3) so a k-mer of up to 32 bases is one `u64`.

use crate::base::mix64 as mix;

pub mod classify;
pub mod clean;
pub mod eval;
pub mod kmer;
pub mod taxa;

/// The IUPAC nucleotide codes (after upper-casing and `U` -> `T`), gap characters excluded.
pub const IUPAC: &[u8] = b"ACGTRYSWKMBDHVN";

/// The two-bit code of an unambiguous base (upper case), None for any other byte.
#[inline]
pub fn code(b: u8) -> Option<u64> {
    match b {
        b'A' => Some(0),
        b'C' => Some(1),
        b'G' => Some(2),
        b'T' => Some(3),
        _ => None,
    }
}

/// Call `f` with the two-bit code (first base most significant) of every k-mer of `seq`
/// (upper-case IUPAC) that has no ambiguous base, in order; 1 <= k <= 32.
#[inline]
pub fn for_each_kmer(seq: &[u8], k: usize, mut f: impl FnMut(u64)) {
    let mask = if k == 32 {
        u64::MAX
    } else {
        (1u64 << (2 * k)) - 1
    };
    let (mut x, mut valid) = (0u64, 0usize);
    for b in seq {
        match code(*b) {
            Some(c) => {
                x = ((x << 2) | c) & mask;
                valid += 1;
            }
            None => valid = 0,
        }
        if valid >= k {
            f(x);
        }
    }
}

/// The set of unambiguous bases an IUPAC code stands for, as a 4-bit mask (A 1, C 2, G 4, T 8);
/// 0 for a byte that is not an upper-case IUPAC code.
#[inline]
pub fn bases_of(b: u8) -> u8 {
    match b {
        b'A' => 1,
        b'C' => 2,
        b'G' => 4,
        b'T' => 8,
        b'R' => 1 | 4,
        b'Y' => 2 | 8,
        b'S' => 2 | 4,
        b'W' => 1 | 8,
        b'K' => 4 | 8,
        b'M' => 1 | 2,
        b'B' => 2 | 4 | 8,
        b'D' => 1 | 4 | 8,
        b'H' => 1 | 2 | 8,
        b'V' => 1 | 2 | 4,
        b'N' => 15,
        _ => 0,
    }
}

/// The reverse complement of a k-mer of `k` two-bit bases.
#[inline]
pub fn revcomp(x: u64, k: usize) -> u64 {
    let mut y = 0u64;
    let mut x = x;
    for _ in 0..k {
        y = (y << 2) | (3 - (x & 3));
        x >>= 2;
    }
    y
}

/// The reverse complement of a sequence of IUPAC codes (ambiguity codes complemented too).
pub fn revcomp_seq(s: &[u8]) -> Vec<u8> {
    s.iter()
        .rev()
        .map(|b| match b {
            b'A' => b'T',
            b'C' => b'G',
            b'G' => b'C',
            b'T' => b'A',
            b'R' => b'Y',
            b'Y' => b'R',
            b'K' => b'M',
            b'M' => b'K',
            b'B' => b'V',
            b'V' => b'B',
            b'D' => b'H',
            b'H' => b'D',
            other => *other, // S, W, N are their own complements
        })
        .collect()
}

/// A read as a DNA language model's tokenizer takes it: with `k`, its overlapping k-mers
/// separated by spaces (DNABERT: `ACGTA`, k 3, is `ACG CGT GTA`; a read shorter than k is itself);
/// without, the read as it is. Ambiguous bases are kept (the model's vocabulary says what they
/// become, usually its unknown token).
pub fn kmer_sentence(seq: &[u8], k: Option<usize>) -> String {
    match k {
        Some(k) if k >= 1 && seq.len() > k => {
            let mut out = String::with_capacity((seq.len() - k + 1) * (k + 1));
            for (i, w) in seq.windows(k).enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(std::str::from_utf8(w).unwrap_or(""));
            }
            out
        }
        _ => String::from_utf8_lossy(seq).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmer_sentences_are_dnaberts_input() {
        assert_eq!(kmer_sentence(b"ACGTA", Some(3)), "ACG CGT GTA");
        assert_eq!(kmer_sentence(b"ACGTA", None), "ACGTA");
        assert_eq!(kmer_sentence(b"AC", Some(3)), "AC");
        assert_eq!(kmer_sentence(b"ACGN", Some(2)), "AC CG GN");
    }

    #[test]
    fn reverse_complements_agree_between_codes_and_text() {
        let s = b"ACGTTGCAAG";
        let enc = |s: &[u8]| s.iter().fold(0u64, |x, b| (x << 2) | code(*b).unwrap());
        assert_eq!(revcomp(enc(s), s.len()), enc(&revcomp_seq(s)));
        assert_eq!(revcomp_seq(b"ACGTRYKMBVDHSWN"), b"NWSDHBVKMRYACGT".to_vec());
        assert_eq!(
            revcomp_seq(&revcomp_seq(b"GATTACARYN")),
            b"GATTACARYN".to_vec()
        );
        // every code stands for its bases and its complement for theirs, complemented
        let comp = |m: u8| ((m & 1) << 3) | ((m & 2) << 1) | ((m & 4) >> 1) | ((m & 8) >> 3);
        for &b in IUPAC {
            assert_ne!(bases_of(b), 0);
            assert_eq!(
                bases_of(revcomp_seq(&[b])[0]),
                comp(bases_of(b)),
                "{}",
                b as char
            );
        }
        assert_eq!(bases_of(b'U'), 0);
        assert_eq!(bases_of(b'-'), 0);
    }
}
