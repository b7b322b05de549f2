//! Fuzz target `handle_gro_vec`: see `tunoffload_fuzz::gro_vec` for the input format and the
//! invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunoffload_fuzz::gro_vec(data));
