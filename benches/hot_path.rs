//! Micro-benchmarks of the hot path, so a regression shows without a mount:
//! `cargo bench --bench hot_path`. Plain std timing (no external harness): each case runs
//! for about half a second and prints ns per operation and throughput.

use envfs::crypto::siv::domain;
use envfs::crypto::{ChunkCipher, Secret32, SivCipher};
use envfs::format::Geometry;
use std::hint::black_box;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

fn bench(name: &str, bytes_per_op: usize, mut op: impl FnMut()) {
    // Warm up, then time batches until half a second has passed.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        op();
    }
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < Duration::from_millis(500) {
        for _ in 0..100 {
            op();
        }
        ops += 100;
    }
    let ns = start.elapsed().as_nanos() as f64 / ops as f64;
    if bytes_per_op > 0 {
        let mbps = bytes_per_op as f64 / ns * 1e9 / 1e6;
        println!("{name:<40} {ns:>10.0} ns/op {mbps:>10.0} MB/s");
    } else {
        println!("{name:<40} {ns:>10.1} ns/op");
    }
}

fn main() {
    // The first second of a run is slower on this (virtualised, shared) machine whatever
    // runs in it, so spin before timing anything.
    let cipher = ChunkCipher::new(&Secret32::from_bytes([7; 32]), [1; 16]);
    let spin = Instant::now();
    let mut scratch = Vec::with_capacity(4096 + 28);
    while spin.elapsed() < Duration::from_secs(1) {
        scratch.clear();
        cipher.seal_with_nonce(0, false, &[0; 4096], [0; 12], &mut scratch);
    }
    for size in [4096usize, 65536] {
        let plain = vec![0x5au8; size];
        let mut sealed = Vec::with_capacity(size + 28);
        bench(&format!("chunk seal {size} B"), size, || {
            sealed.clear();
            cipher.seal_into(3, false, black_box(&plain), &mut sealed);
        });
        let mut nonces = vec![0u8; 12 * 256];
        let mut next = 256;
        bench(
            &format!("chunk seal {size} B, batched nonces"),
            size,
            || {
                if next == 256 {
                    envfs::crypto::random::fill(&mut nonces);
                    next = 0;
                }
                let nonce: [u8; 12] = nonces[next * 12..next * 12 + 12].try_into().unwrap();
                next += 1;
                sealed.clear();
                cipher.seal_with_nonce(3, false, black_box(&plain), nonce, &mut sealed);
            },
        );
        let mut template = Vec::new();
        cipher.seal_into(3, false, &plain, &mut template);
        let mut work = template.clone();
        bench(&format!("chunk open {size} B"), size, || {
            work.copy_from_slice(&template);
            black_box(cipher.open_in_place(3, false, &mut work).unwrap());
        });
        let mut reply = Vec::with_capacity(size);
        bench(&format!("chunk open {size} B into a reply"), size, || {
            reply.clear();
            cipher
                .open_into(3, false, black_box(&template), &mut reply)
                .unwrap();
        });
    }

    // The RustCrypto implementation envfs used before switching chunks to AWS-LC, timed on
    // the same inputs so the reason for the switch stays measurable.
    {
        use aes_gcm::aead::{AeadInOut, KeyInit};
        let rustcrypto = aes_gcm::Aes256Gcm::new_from_slice(&[7; 32]).unwrap();
        for size in [4096usize, 65536] {
            let mut buf = vec![0x5au8; size];
            let nonce = aes_gcm::Nonce::from([3; 12]);
            bench(
                &format!("aes-gcm crate seal {size} B (no copy)"),
                size,
                || {
                    black_box(
                        rustcrypto
                            .encrypt_inout_detached(&nonce, &[0; 25], (&mut buf[..]).into())
                            .unwrap(),
                    );
                },
            );
            let tag = rustcrypto
                .encrypt_inout_detached(&nonce, &[0; 25], (&mut buf[..]).into())
                .unwrap();
            let template = buf.clone();
            bench(&format!("aes-gcm crate open {size} B"), size, || {
                buf.copy_from_slice(&template);
                rustcrypto
                    .decrypt_inout_detached(&nonce, &[0; 25], (&mut buf[..]).into(), &tag)
                    .unwrap();
            });
        }
    }

    {
        use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap());
        for size in [4096usize, 65536] {
            let mut buf = vec![0x5au8; size];
            bench(&format!("aws-lc raw seal {size} B (no copy)"), size, || {
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([3; 12]),
                        Aad::from([0u8; 25]),
                        &mut buf[..],
                    )
                    .unwrap();
                black_box(tag.as_ref()[0]);
            });
        }
    }

    let names = SivCipher::new(Zeroizing::new([9; 64]));
    let sealed_name = names.encrypt(&[domain::NAME], b"quarterly-report-2026.pdf");
    bench("name encrypt (25 B)", 0, || {
        black_box(names.encrypt(&[domain::NAME], black_box(b"quarterly-report-2026.pdf")));
    });
    bench("name decrypt (25 B)", 0, || {
        black_box(
            names
                .decrypt(&[domain::NAME], black_box(&sealed_name))
                .unwrap(),
        );
    });

    let g = Geometry::new(4096, 1024);
    let mut x = 1u64;
    bench("plain size from backing size", 0, || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        black_box(g.plain_size_lossy(black_box(x >> 20)));
    });
    bench("backing size from plain size", 0, || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        black_box(g.backing_size(black_box(x >> 20)));
    });
}
