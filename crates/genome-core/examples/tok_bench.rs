use genome_core::embed::tokenize::TextTokenizer;
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let tok = std::fs::read(format!("{}/tokenizer.json", a[1])).unwrap();
    let t = TextTokenizer::from_json(&tok, 256).unwrap();
    let text = std::fs::read_to_string(&a[2]).unwrap();
    let texts: Vec<&str> = text.lines().collect();
    for b in [1usize, 8, 32] {
        let t0 = Instant::now();
        let mut tokens = 0;
        for c in texts.chunks(b) {
            let e = t.encode_batch(c).unwrap();
            tokens += e.ids.len();
        }
        println!(
            "b{b}: {:.3} s, padded tokens {tokens}",
            t0.elapsed().as_secs_f64()
        );
    }
}
