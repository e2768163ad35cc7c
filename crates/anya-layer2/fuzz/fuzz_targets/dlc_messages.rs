#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anya_layer2_fuzz::dlc_messages(data));
