//! Fuzz targets of adcorre's parsers of untrusted files: each target in `fuzz_targets/` feeds
//! libFuzzer's input to one function of [`entries`], which `tests/fuzz_regressions.rs` in the
//! crate also replays over the saved inputs, so that every crash found stays fixed.

pub mod entries;
