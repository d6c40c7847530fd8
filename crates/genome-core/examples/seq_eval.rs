//! Train and evaluate the taxonomy classifier on a FASTA file with RDP-style lineages in the
//! header's last tab-separated field (the 16S gold set), on a seeded genus split.
//!
//! cargo run --release -p genome-core --example seq_eval -- FASTA SEED [out.tsv]
//! Writes the split (id, part) and the predictions when out.tsv is given.

use std::io::Write;
use std::time::Instant;

use genome_core::rank::metrics::{brier, ece};
use genome_core::seq::classify::{Classifier, ClassifierConfig};
use genome_core::seq::taxa::{parse_fasta, split_by_genus, Lineage};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let text = std::fs::read_to_string(&args[1]).unwrap();
    let seed: u64 = args.get(2).map_or(1, |s| s.parse().unwrap());
    let recs = parse_fasta(&text).unwrap();
    let ranks: Vec<String> = ["phylum", "class", "order", "family", "genus"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let lineages: Vec<Vec<String>> = recs
        .iter()
        .map(|r| {
            let l = Lineage::parse(r.description.rsplit('\t').next().unwrap(), ';').0;
            l[l.len() - 5..].to_vec()
        })
        .collect();
    let seqs: Vec<Vec<u8>> = recs
        .iter()
        .map(|r| r.seq.to_ascii_uppercase().into_bytes())
        .collect();
    let split = split_by_genus(
        &lineages
            .iter()
            .map(|l| Lineage(l.clone()))
            .collect::<Vec<_>>(),
        4,
        0.2,
        0.1,
        seed,
    );
    eprintln!(
        "train {} test {} novel {}",
        split.train.len(),
        split.test.len(),
        split.novel.len()
    );
    let mut cfg = ClassifierConfig::default();
    if let Ok(c) = std::env::var("CANDIDATES") {
        cfg.candidates = c.parse().unwrap();
    }
    if let Ok(c) = std::env::var("FOLDS") {
        cfg.calib_folds = c.parse().unwrap();
    }
    if let Ok(c) = std::env::var("NOVEL") {
        cfg.calib_novel_share = c.parse().unwrap();
    }
    let t = Instant::now();
    let tr_s: Vec<&[u8]> = split.train.iter().map(|&i| seqs[i].as_slice()).collect();
    let tr_l: Vec<Vec<String>> = split.train.iter().map(|&i| lineages[i].clone()).collect();
    let model = Classifier::train(&cfg, &ranks, &tr_s, &tr_l, true, &mut |_, _, _| false)
        .unwrap()
        .unwrap();
    eprintln!(
        "trained in {:.2} s; calibration {:?}",
        t.elapsed().as_secs_f64(),
        model.calibration
    );
    let t = Instant::now();
    let eval: Vec<usize> = split.test.iter().chain(&split.novel).copied().collect();
    let preds: Vec<_> = eval.iter().map(|&i| model.classify(&seqs[i])).collect();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "classified {} in {:.2} s: {:.0} seq/s on one thread",
        eval.len(),
        secs,
        eval.len() as f64 / secs
    );
    let nt = split.test.len();
    let right = |j: usize, r: usize| -> bool {
        let names = model.names(&preds[j]);
        names[..=r]
            == lineages[eval[j]][..=r]
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()[..]
    };
    for (r, rank) in ranks.iter().enumerate() {
        let acc = (0..nt).filter(|&j| right(j, r)).count() as f64 / nt as f64;
        let conf_k: Vec<f64> = (0..nt).map(|j| preds[j].confidence[r]).collect();
        let ok_k: Vec<bool> = (0..nt).map(|j| right(j, r)).collect();
        let conf_m: Vec<f64> = (0..eval.len()).map(|j| preds[j].confidence[r]).collect();
        let ok_m: Vec<bool> = (0..eval.len()).map(|j| right(j, r)).collect();
        let called: Vec<usize> = (0..nt)
            .filter(|&j| preds[j].confidence[r] >= cfg.cutoff)
            .collect();
        let called_right =
            called.iter().filter(|&&j| right(j, r)).count() as f64 / called.len().max(1) as f64;
        let boot_k: Vec<f64> = (0..nt).map(|j| preds[j].bootstrap[r]).collect();
        println!(
            "{rank:7} known acc {:.4}  called {:.4} right {:.4}  ECE known {:.4} mixed {:.4} (bootstrap {:.4})  Brier {:.4}",
            acc,
            called.len() as f64 / nt as f64,
            called_right,
            ece(&conf_k, &ok_k, 10),
            ece(&conf_m, &ok_m, 10),
            ece(&boot_k, &ok_k, 10),
            brier(&conf_m, &ok_m)
        );
    }
    let g = ranks.len() - 1;
    let novel = nt..eval.len();
    let withheld_novel = novel
        .clone()
        .filter(|&j| preds[j].confidence[g] < cfg.cutoff)
        .count() as f64
        / novel.len() as f64;
    let family_novel =
        novel.clone().filter(|&j| right(j, g - 1)).count() as f64 / novel.len() as f64;
    let family_called_novel = novel
        .clone()
        .filter(|&j| right(j, g - 1) && preds[j].confidence[g - 1] >= cfg.cutoff)
        .count() as f64
        / novel.len() as f64;
    let withheld_known = (0..nt)
        .filter(|&j| preds[j].confidence[g] < cfg.cutoff)
        .count() as f64
        / nt as f64;
    println!("novel: genus withheld {withheld_novel:.4}, family right {family_novel:.4} (called and right {family_called_novel:.4}); known genus withheld {withheld_known:.4}");
    if let Some(out) = args.get(3) {
        let mut f = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
        for (j, &i) in eval.iter().enumerate() {
            writeln!(
                f,
                "{}\t{}\t{}\t{}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\t{}",
                recs[i].id,
                if j < nt { "test" } else { "novel" },
                u8::from(right(j, g)),
                model.names(&preds[j]).join(";"),
                preds[j].confidence[g],
                preds[j].bootstrap[g],
                preds[j].s_in[g],
                preds[j].s_out[g],
                model.cohesion[preds[j].leaf as usize],
                model.leaf_size[preds[j].leaf as usize]
            )
            .unwrap();
        }
    }
}
