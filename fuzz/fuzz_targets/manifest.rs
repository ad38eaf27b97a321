//! A manifest, read at any clock: its first 8 bytes are the time in
//! seconds since the epoch, the rest the manifest.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let (now, manifest) = data.split_at(8);
        let now = u64::from_le_bytes(now.try_into().unwrap());
        baton::fuzzing::manifest(manifest, now);
    }
});
