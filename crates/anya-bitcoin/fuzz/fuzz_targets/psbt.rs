#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anya_bitcoin_fuzz::psbt(data));
