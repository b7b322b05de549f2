//! Fuzz target `aead_open`: see `tunoffload_fuzz::aead::open` for the input format and
//! the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunoffload_fuzz::aead::open(data));
