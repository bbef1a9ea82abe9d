#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = eddy_fuzz::checkpoint_manifest(data);
});
