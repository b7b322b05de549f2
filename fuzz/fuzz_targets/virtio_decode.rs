//! Fuzz target `virtio_decode`: see `tunoffload_fuzz::decode` for the input format and the
//! invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunoffload_fuzz::decode(data));
