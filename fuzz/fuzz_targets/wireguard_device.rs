//! Fuzz target `wireguard_device`: see `tunoffload_fuzz::wireguard::device` for the input
//! format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunoffload_fuzz::wireguard::device(data));
