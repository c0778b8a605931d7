//! Every parser of bytes envfs does not control, driven with arbitrary input: the same entry
//! points the fuzzers in `fuzz/` run (`envfs::fuzzing`), so CI exercises them on every run.
//! Inputs are random bytes, and mutations (bit flips, cuts, insertions, splices) of valid
//! seeds, which get past the magic numbers and length fields that random bytes never pass.
//! A failure prints the input; `scripts/fuzz.sh` runs the same targets under libFuzzer.

use envfs::fuzzing::{ENTRY_POINTS, seeds};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Set(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, v)| Mutation::Set(at, v)),
    ]
}

fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for m in mutations {
        let len = data.len().max(1);
        match m {
            Mutation::Flip(at, bit) if !data.is_empty() => data[at % len] ^= 1 << bit,
            Mutation::Set(at, v) if !data.is_empty() => data[at % len] = *v,
            Mutation::Cut(at) => data.truncate(at % (data.len() + 1)),
            Mutation::Insert(at, bytes) => {
                let at = at % (data.len() + 1);
                data.splice(at..at, bytes.iter().copied());
            }
            _ => {}
        }
    }
    data
}

fn run(target: &str, data: &[u8]) {
    let (_, f) = ENTRY_POINTS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known entry point");
    f(data);
}

#[test]
fn every_entry_point_has_seeds_that_it_accepts() {
    for (name, f) in ENTRY_POINTS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        for seed in seeds {
            f(&seed);
        }
    }
}

#[test]
fn the_valid_seeds_really_parse() {
    // Seeds that failed the first check would leave the mutations exploring nothing.
    for seed in seeds("config") {
        envfs::format::VaultConfig::parse(&seed).expect("config seed parses");
    }
    for seed in seeds("header") {
        envfs::format::FileHeader::parse(&seed).expect("header seed parses");
    }
    for seed in seeds("host_record") {
        let text = String::from_utf8(seed).unwrap();
        if !text.contains("vault ") {
            envfs::vault::known::HostRecord::parse(&text).expect("record seed parses");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(target in 0..ENTRY_POINTS.len(), data in prop::collection::vec(any::<u8>(), 0..2048)) {
        (ENTRY_POINTS[target].1)(&data);
    }

    #[test]
    fn mutated_seeds(
        target in 0..ENTRY_POINTS.len(),
        pick in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let name = ENTRY_POINTS[target].0;
        let seeds = seeds(name);
        let data = apply(&seeds[pick % seeds.len()], &mutations);
        run(name, &data);
    }
}
