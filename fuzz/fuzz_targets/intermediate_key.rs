#![no_main]
//! `envfs::fuzzing::intermediate_key` under libFuzzer (see that function for what is checked).
libfuzzer_sys::fuzz_target!(|data: &[u8]| envfs::fuzzing::intermediate_key(data));
