#![no_main]
//! `envfs::fuzzing::geometry` under libFuzzer (see that function for what is checked).
libfuzzer_sys::fuzz_target!(|data: &[u8]| envfs::fuzzing::geometry(data));
