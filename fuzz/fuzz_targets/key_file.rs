#![no_main]
//! `envfs::fuzzing::key_file` under libFuzzer (see that function for what is checked).
libfuzzer_sys::fuzz_target!(|data: &[u8]| envfs::fuzzing::key_file(data));
