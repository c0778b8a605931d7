#![no_main]
//! `envfs::fuzzing::link_target` under libFuzzer (see that function for what is checked).
libfuzzer_sys::fuzz_target!(|data: &[u8]| envfs::fuzzing::link_target(data));
