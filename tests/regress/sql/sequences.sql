-- Sequences: the rows and report of clean_sequences, a k-mer featuriser's registry row, and
-- bad reads as ERRORs with their SQLSTATE.
SELECT * FROM genome.clean_sequences(ARRAY[
    'TTGTGCCAGCAGCCGCGGTAATACGGAGGGTGCAAGCGTTAATCGGAATTACTGGGCGTAAAGCGCACGCAGGCGGTTTGTTAAGTCAGATGTGAAATCCCCGGGCTCAACCTGGGAACTGCATCTGATACTGGCAAGC',
    'ttgtgccagcagccgcggtaatacggagggtgcaagcgttaatcggaattactgggcgtaaagcgcacgcaggcggtttgttaagtcagatgtgaaatccccgggctcaacctgggaactgcatctgatactggcaagc',
    NULL, '', '>S000005078 Geobacillus', 'ACGTZZ', 'ACGU'],
    forward_primers => ARRAY['GTGYCAGCMGCCGCGGTAA'], min_length => 20);
SELECT genome.clean_sequences_report(ARRAY['ACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGT', 'acgtacgtacgtacgtacgtacgtacgtacgtacgtacgtacgtacgtacgt', NULL, 'xyz', 'ACGT']);
SELECT genome.register_kmer_featurizer('regress-k4', '1', k => 4) > 0 AS registered;
SELECT name, version, task, dimension, config, weights IS NULL AS no_weights, stage FROM genome.models WHERE name = 'regress-k4';
SELECT vector_dims(genome.embed_sequence('ACGTTGCAAGGTCC', 'regress-k4')) AS dims,
       genome.embed_sequence('acguugcaagguCC', 'regress-k4') = genome.embed_sequence('ACGTTGCAAGGTCC', 'regress-k4') AS rna_and_case_read_alike,
       genome.embed_sequence('NNNNNNNNN', 'regress-k4') IS NULL AS no_kmer_gives_null;
SELECT q, err(q) FROM (VALUES
    ($$SELECT genome.embed_sequence('hello world', 'regress-k4')$$),
    ($$SELECT genome.embed_sequence('', 'regress-k4')$$),
    ($$SELECT genome.embed_sequence('>S000005078 Geobacillus', 'regress-k4')$$),
    ($$SELECT genome.embed_sequence(repeat('A', 1000001), 'regress-k4')$$),
    ($$SELECT genome.embed_sequences(ARRAY['ACGT', NULL, '12'], 'regress-k4')$$),
    ($$SELECT genome.embed_sequence('ACGT', 'tiny-bert')$$),
    ($$SELECT genome.embed('ACGT', 'regress-k4')$$),
    ($$SELECT genome.register_kmer_featurizer('regress-k4', '1')$$),
    ($$SELECT genome.register_kmer_featurizer('regress-x', '1', k => 13)$$),
    ($$SELECT genome.register_kmer_featurizer('regress-x', '1', normalization => 'tfidf')$$),
    ($$SELECT * FROM genome.clean_sequences(ARRAY['ACGT'], min_length => 0)$$),
    ($$SELECT * FROM genome.clean_sequences(ARRAY['ACGT'], forward_primers => ARRAY['ACGX'])$$)
) v(q);
