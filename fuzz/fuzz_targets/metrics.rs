//! A scraper's bytes to the metrics listener (hyper).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzzing::metrics_request(data));
