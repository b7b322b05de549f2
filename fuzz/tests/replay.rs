//! Replays the committed seeds (`fuzz/seeds/<target>/`) and the inputs of past findings
//! (`fuzz/regressions/<target>/`) through the fuzz targets' invariant checks, on stable
//! and without libFuzzer:
//!
//!     cargo test --manifest-path fuzz/Cargo.toml --no-default-features

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths {
            let data = std::fs::read(&p).unwrap();
            eprintln!("{target}: {}", p.display());
            check(&data);
            count += 1;
        }
    }
    assert!(count > 0, "no inputs for {target}");
}

#[test]
fn gso_split() {
    replay("gso_split", tunoffload_fuzz::gso);
}

#[test]
fn handle_gro_vec() {
    replay("handle_gro_vec", tunoffload_fuzz::gro_vec);
}

#[test]
fn handle_gro_fixed() {
    replay("handle_gro_fixed", tunoffload_fuzz::gro_fixed);
}

#[test]
fn virtio_decode() {
    replay("virtio_decode", tunoffload_fuzz::decode);
}

#[test]
fn aead_open() {
    replay("aead_open", tunoffload_fuzz::aead::open);
}

#[test]
fn wireguard_device() {
    replay("wireguard_device", tunoffload_fuzz::wireguard::device);
}
