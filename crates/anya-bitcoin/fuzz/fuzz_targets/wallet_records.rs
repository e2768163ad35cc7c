#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anya_bitcoin_fuzz::wallet_records(data));
