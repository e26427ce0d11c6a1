//! Replays saved fuzz inputs through the functions the fuzz targets run (`fuzz/src/entries.rs`):
//! the seeds in `fuzz/seeds/<target>/` and every input that once crashed, hung or allocated
//! without bound, minimised, in `tests/fixtures/fuzz/<target>/`. No nightly needed: a crash
//! found once stays fixed in the normal `cargo test`.
#![cfg(feature = "train")]

#[path = "../fuzz/src/entries.rs"]
#[allow(dead_code)]
mod entries;

use std::path::Path;

type Entry = fn(&[u8]);

const TARGETS: [(&str, Entry); 11] = [
    ("keras_h5", entries::keras_h5),
    ("model_mpk", entries::model_mpk),
    ("npy", entries::npy),
    ("npz", entries::npz),
    ("fer2013_csv", entries::fer2013_csv),
    ("ferplus_votes", entries::ferplus_votes),
    ("rafdb_list", entries::rafdb_list),
    ("affectnet_csv", entries::affectnet_csv),
    ("image_preprocess", entries::image_preprocess),
    ("face_detector", entries::face_detector),
    ("train_config", entries::train_config),
];

/// The files (or, with `folders`, the subfolders) of `folder`, sorted; none if it is missing.
fn entries(folder: &Path, folders: bool) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .map(|entry| entry.unwrap().path())
        .filter(|path| if folders { path.is_dir() } else { path.is_file() })
        .collect();
    paths.sort();
    paths
}

#[test]
fn every_target_has_seeds_and_they_run_clean() {
    for (target, run) in TARGETS {
        let seeds = entries(&Path::new("fuzz/seeds").join(target), false);
        assert!(!seeds.is_empty(), "no seeds for {target}");
        for seed in seeds {
            run(&std::fs::read(&seed).unwrap());
        }
    }
}

#[test]
fn inputs_that_once_failed_run_clean() {
    let mut replayed = 0;
    for folder in entries(Path::new("tests/fixtures/fuzz"), true) {
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        let (_, run) = TARGETS
            .iter()
            .find(|(target, _)| *target == name)
            .unwrap_or_else(|| panic!("tests/fixtures/fuzz/{name} is not a fuzz target"));
        for input in entries(&folder, false) {
            run(&std::fs::read(&input).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed >= 1, "the saved inputs are missing");
}
