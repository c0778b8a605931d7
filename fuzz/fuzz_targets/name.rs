#![no_main]
//! `envfs::fuzzing::name` under libFuzzer (see that function for what is checked).
libfuzzer_sys::fuzz_target!(|data: &[u8]| envfs::fuzzing::name(data));
