//! Reading NumPy `.npy` / `.npz` arrays (the release's data and the test fixtures).

use std::fs::File;
use std::io::{Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{NpzReader, ReadNpyExt, ReadableElement};

use crate::error::{AdCorreError, Result};

/// Reads a whole `.npy` file.
pub fn read_npy<T: ReadableElement>(path: &Path) -> Result<ArrayD<T>> {
    let file = File::open(path).map_err(|err| AdCorreError::io(path, err))?;
    ArrayD::<T>::read_npy(file).map_err(|err| AdCorreError::Array {
        path: path.to_path_buf(),
        name: path.file_name().unwrap_or_default().to_string_lossy().into(),
        reason: err.to_string(),
    })
}

/// An open `.npz` archive whose arrays are read by name, from a file or from memory.
pub struct NpzFile<R: Read + Seek = File> {
    path: PathBuf,
    reader: NpzReader<R>,
}

impl NpzFile {
    /// Opens an `.npz` archive.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|err| AdCorreError::io(path, err))?;
        NpzFile::new(path, file)
    }
}

impl NpzFile<Cursor<&'static [u8]>> {
    /// An archive embedded in the program; `name` stands for its path in errors.
    pub fn embedded(name: &str, bytes: &'static [u8]) -> Result<Self> {
        NpzFile::new(Path::new(name), Cursor::new(bytes))
    }
}

impl<R: Read + Seek> NpzFile<R> {
    fn new(path: &Path, source: R) -> Result<Self> {
        let reader = NpzReader::new(source).map_err(|err| AdCorreError::Array {
            path: path.to_path_buf(),
            name: String::new(),
            reason: err.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            reader,
        })
    }

    /// The names of the archive's arrays (without `.npy`).
    pub fn names(&mut self) -> Result<Vec<String>> {
        let names = self.reader.names().map_err(|err| AdCorreError::Array {
            path: self.path.clone(),
            name: String::new(),
            reason: err.to_string(),
        })?;
        Ok(names.into_iter().map(|name| name.trim_end_matches(".npy").to_string()).collect())
    }

    /// Reads the array `name` (with or without `.npy`) with element type `T`.
    pub fn array<T: ReadableElement>(&mut self, name: &str) -> Result<ArrayD<T>> {
        self.reader
            .by_name::<ndarray::OwnedRepr<T>, IxDyn>(name)
            .map_err(|err| AdCorreError::Array {
                path: self.path.clone(),
                name: name.to_string(),
                reason: err.to_string(),
            })
    }

    /// Reads a 0-d (or one-element) array as a number.
    pub fn scalar_f64(&mut self, name: &str) -> Result<f64> {
        let array = self.array::<f64>(name)?;
        match array.iter().next() {
            Some(&value) if array.len() == 1 => Ok(value),
            _ => Err(AdCorreError::Shape {
                what: format!("{}: {name}", self.path.display()),
                expected: "a scalar".into(),
                got: array.shape().to_vec(),
            }),
        }
    }
}
