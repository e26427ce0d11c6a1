#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| adcorre_fuzz::entries::face_detector(data));
