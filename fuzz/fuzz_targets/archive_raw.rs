//! Raw bytes as a tar.gz (first byte even) or a zip (odd).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((which, bytes)) = data.split_first() {
        let _ = baton::fuzzing::archive(bytes, which % 2 == 1);
    }
});
