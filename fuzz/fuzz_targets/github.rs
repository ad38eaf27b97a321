//! GitHub's Link, Retry-After and reset headers and release JSON.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::github(data));
