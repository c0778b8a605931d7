#![no_main]
//! `envfs::fuzzing::sidecar` under libFuzzer (see that function for what is checked).
libfuzzer_sys::fuzz_target!(|data: &[u8]| envfs::fuzzing::sidecar(data));
