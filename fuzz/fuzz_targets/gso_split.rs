//! Fuzz target `gso_split`: see `tunoffload_fuzz::gso` for the input format and the
//! invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunoffload_fuzz::gso(data));
