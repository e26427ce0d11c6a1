//! The crate's error type: every failure a caller can cause is a typed, named error.

use std::path::PathBuf;

/// Everything that can go wrong in `adcorre`, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum AdCorreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A model file exists but is not a usable adcorre model (truncated, corrupt or foreign).
    #[error("{path} is not a valid adcorre model file: {reason}")]
    InvalidModelFile {
        /// The model file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A tensor or array does not have the shape an operation needs.
    #[error("wrong shape for {what}: expected {expected}, got {got:?}")]
    Shape {
        /// Which input was wrong.
        what: String,
        /// The shape that was needed, in words.
        expected: String,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A label is outside the classes the model or dataset knows.
    #[error("unknown label {label} (valid labels: 0..{num_classes})")]
    UnknownLabel {
        /// The label given.
        label: i64,
        /// How many classes there are.
        num_classes: usize,
    },
    /// A loss or metric became NaN or infinite.
    #[error("non-finite value in {0}")]
    NonFinite(String),
    /// Multi-device training failed (a replica stopped, or a collective operation failed).
    #[error("multi-device training: {0}")]
    Devices(String),
    /// A file is not a Keras HDF5 model (or not one of the Ad-Corre architecture).
    #[error("{path}: not a Keras HDF5 Ad-Corre model: {reason}")]
    NotKerasModel {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer or weight the Ad-Corre architecture needs is missing from a Keras file.
    #[error("{path}: layer '{layer}': {problem}")]
    KerasLayer {
        /// The file.
        path: PathBuf,
        /// The Keras layer name.
        layer: String,
        /// What is missing or unreadable.
        problem: String,
    },
    /// A Keras weight does not have the shape the architecture needs.
    #[error("{path}: weight '{weight}' has shape {got:?}, the architecture needs {expected:?}")]
    KerasShape {
        /// The file.
        path: PathBuf,
        /// The Keras weight (`layer/name`).
        weight: String,
        /// The shape needed, in Keras' layout.
        expected: Vec<usize>,
        /// The shape stored.
        got: Vec<usize>,
    },
    /// A line of a dataset's text file (CSV, label list) could not be parsed.
    #[error("{path}:{line}: {reason}")]
    MalformedLine {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An image could not be decoded.
    #[error("{path}: cannot decode image: {reason}")]
    Image {
        /// The image file (or a description of an in-memory image).
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// An array file (.npy / .npz) could not be decoded.
    #[error("{path}: cannot read array '{name}': {reason}")]
    Array {
        /// The file.
        path: PathBuf,
        /// The array inside the file.
        name: String,
        /// The decoder's message.
        reason: String,
    },
    /// Input values a model cannot take: NaN or infinite, or outside its card's value range.
    #[error("{what}: {reason}")]
    InvalidInput {
        /// Which input (e.g. "input batch", a file).
        what: String,
        /// The first offending value and what is accepted.
        reason: String,
    },
    /// A dataset split that holds no samples (wrong folder, or the files belong to other splits).
    #[error("{dataset}: the {split} split is empty; {holds}")]
    EmptySplit {
        /// The dataset as loaded (format and root).
        dataset: String,
        /// The split asked for.
        split: String,
        /// What the dataset does hold, in words.
        holds: String,
    },
    /// An untrusted file declares more than a resource limit allows (pixels, bytes, elements);
    /// nothing that large was allocated.
    #[error("{path}: {what} exceeds the limit of {limit} ({how_to_raise})")]
    LimitExceeded {
        /// The file (or a description of in-memory data).
        path: PathBuf,
        /// What is too large, with its size (e.g. "image of 60000x60000 = 3600000000 pixels").
        what: String,
        /// The limit, with its unit.
        limit: String,
        /// Which setting raises the limit.
        how_to_raise: String,
    },
}

/// Shorthand for results whose error is [`AdCorreError`].
pub type Result<T> = std::result::Result<T, AdCorreError>;

impl AdCorreError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
