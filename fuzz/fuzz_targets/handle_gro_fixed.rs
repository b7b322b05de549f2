//! Fuzz target `handle_gro_fixed`: see `tunoffload_fuzz::gro_fixed` for the input format and the
//! invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunoffload_fuzz::gro_fixed(data));
