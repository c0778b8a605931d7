//! Writes the seed corpus of every fuzz target into `OUTDIR/<target>/`:
//!
//! ```text
//! cargo run --example fuzz_seeds -- OUTDIR
//! ```
//!
//! The seeds are `envfs::fuzzing::seeds` (valid inputs made with the fuzzers' fixed keys)
//! plus the frozen golden vault's config, headers and sidecar, so libFuzzer starts from
//! bytes that pass the first checks. scripts/fuzz.sh runs it before fuzzing.

use envfs::fuzzing::{ENTRY_POINTS, seeds};
use std::path::{Path, PathBuf};

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: fuzz_seeds OUTDIR"),
    );
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1/vault");
    for (name, _) in ENTRY_POINTS {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut all = seeds(name);
        match *name {
            "config" => all.push(std::fs::read(golden.join("envfs.conf"))?),
            "header" => {
                for entry in std::fs::read_dir(&golden)? {
                    let path = entry?.path();
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    if bytes.len() >= 1024 && !path.to_string_lossy().ends_with(".name") {
                        all.push(bytes[..1024].to_vec());
                    }
                }
            }
            "sidecar" => {
                for entry in std::fs::read_dir(&golden)? {
                    let path = entry?.path();
                    if path.to_string_lossy().ends_with(".name") {
                        all.push(std::fs::read(&path)?);
                    }
                }
            }
            _ => {}
        }
        for (i, seed) in all.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed)?;
        }
    }
    println!("seeds written to {}", out.display());
    Ok(())
}
