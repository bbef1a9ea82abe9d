#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = eddy_fuzz::view_query(data);
});
