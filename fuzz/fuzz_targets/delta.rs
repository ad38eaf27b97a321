//! A delta patch applied to a small reference under a small max_size.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::delta(data));
