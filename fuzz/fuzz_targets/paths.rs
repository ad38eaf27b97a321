//! A manifest key and the url it names; a checksum file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::paths(data));
