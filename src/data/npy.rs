//! Reading NumPy `.npy` / `.npz` arrays (the release's data, the test fixtures, batches given
//! to `adcorre predict --input-npy`).
//!
//! These files may come from anywhere, so the header is parsed and checked before anything is
//! allocated: the element count the shape declares must fit in the bytes actually present, and
//! a header is at most [`MAX_HEADER_BYTES`] long. A false header is a typed error, never an
//! allocation of what it claims.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use crate::error::{AdCorreError, Result};

/// Longest `.npy` header accepted (NumPy itself refuses more than 10,000 bytes by default).
pub const MAX_HEADER_BYTES: usize = 65_536;

/// An element type this reader takes: its NumPy type code (`f4`, `i8`, ...) and how to decode
/// one little- or big-endian value.
pub trait NpyElement: Copy {
    /// NumPy's type code without the byte-order mark, e.g. `f4`.
    const TYPE_CODE: &'static str;
    /// Decodes one value from its `size_of::<Self>()` bytes.
    fn decode(bytes: &[u8], big_endian: bool) -> Self;
}

macro_rules! npy_element {
    ($($ty:ty => $code:literal),* $(,)?) => {$(
        impl NpyElement for $ty {
            const TYPE_CODE: &'static str = $code;
            fn decode(bytes: &[u8], big_endian: bool) -> Self {
                let mut raw = [0u8; std::mem::size_of::<$ty>()];
                raw.copy_from_slice(bytes);
                if big_endian { <$ty>::from_be_bytes(raw) } else { <$ty>::from_le_bytes(raw) }
            }
        }
    )*};
}

npy_element!(f32 => "f4", f64 => "f8", u8 => "u1", i8 => "i1", i32 => "i4", i64 => "i8", u32 => "u4", u64 => "u8");

/// The header of a `.npy` array: element type, memory order and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// NumPy's type descriptor, e.g. `<f4`.
    pub descr: String,
    /// Whether the data is stored column-major.
    pub fortran_order: bool,
    /// The array's shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Bytes before the data (magic, version, length, header text).
    pub data_offset: usize,
}

impl NpyHeader {
    /// Parses the header at the start of `bytes` (which may hold more than the header).
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err("not a .npy array (no \\x93NUMPY signature)".into());
        }
        let (length, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
            version => return Err(format!("unsupported .npy format version {version}")),
        };
        if length > MAX_HEADER_BYTES {
            return Err(format!("header of {length} bytes, more than the {MAX_HEADER_BYTES} accepted"));
        }
        let text = bytes
            .get(start..start + length)
            .ok_or_else(|| format!("header of {length} bytes, the file ends before it does"))?;
        let text = std::str::from_utf8(text).map_err(|_| "header is not text".to_string())?;
        let descr = dict_value(text, "descr")?;
        let descr = descr
            .strip_prefix('\'')
            .and_then(|d| d.strip_suffix('\''))
            .ok_or_else(|| format!("descr {descr} is not a simple type (structured arrays are not supported)"))?
            .to_string();
        let fortran_order = match dict_value(text, "fortran_order")? {
            "False" => false,
            "True" => true,
            other => return Err(format!("fortran_order is '{other}', expected True or False")),
        };
        let shape = dict_value(text, "shape")?;
        let inner = shape
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| format!("shape '{shape}' is not a tuple"))?;
        let shape = inner
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| d.parse::<usize>().map_err(|_| format!("dimension '{d}' is not a size")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            descr,
            fortran_order,
            shape,
            data_offset: start + length,
        })
    }

    /// Bytes per element of the descriptor (`<f4` -> 4), if it is a plain number type.
    pub fn item_size(&self) -> Option<usize> {
        let kind = self.descr.get(1..2)?;
        let size: usize = self.descr.get(2..)?.parse().ok()?;
        (["f", "i", "u", "b"].contains(&kind) && [1, 2, 4, 8].contains(&size)).then_some(size)
    }

    /// Bytes of data the header declares, `None` if that overflows.
    pub fn data_bytes(&self) -> Option<u64> {
        let item = self.item_size()? as u64;
        self.shape.iter().try_fold(item, |total, &d| total.checked_mul(d as u64))
    }

    /// Checks that the declared data is exactly the `available` bytes after the header.
    fn check_length(&self, available: u64) -> std::result::Result<(), String> {
        let declared = self
            .data_bytes()
            .ok_or_else(|| format!("unsupported element type '{}' ({})", self.descr, describe_descr(&self.descr)))?;
        if declared != available {
            return Err(format!(
                "the header declares shape {:?} of '{}' ({declared} bytes) but {available} bytes of data follow",
                self.shape, self.descr
            ));
        }
        Ok(())
    }
}

/// The text after `'key':` in a header dict, up to the next top-level comma or the end.
fn dict_value<'a>(text: &'a str, key: &str) -> std::result::Result<&'a str, String> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let start = quoted
        .iter()
        .find_map(|k| text.find(k.as_str()).map(|at| at + k.len()))
        .ok_or_else(|| format!("header has no '{key}'"))?;
    let rest = text[start..].trim_start();
    let rest = rest.strip_prefix(':').ok_or_else(|| format!("header: no ':' after '{key}'"))?.trim_start();
    let mut depth = 0usize;
    for (at, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            ',' | '}' if depth == 0 => return Ok(rest[..at].trim()),
            _ => {}
        }
    }
    Ok(rest.trim())
}

/// A descriptor in words, for messages.
fn describe_descr(descr: &str) -> String {
    let name = match descr.get(1..).unwrap_or(descr) {
        "f4" => "float32",
        "f8" => "float64",
        "f2" => "float16",
        "u1" => "uint8",
        "i8" => "int64",
        "i4" => "int32",
        "b1" => "bool",
        _ => return format!("NumPy type '{descr}'"),
    };
    if descr.starts_with('>') {
        format!("big-endian {name}")
    } else {
        name.to_string()
    }
}

fn array_error(path: &Path, name: &str, reason: impl Into<String>) -> AdCorreError {
    AdCorreError::Array {
        path: path.to_path_buf(),
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Parses and checks the header at the start of `source` (`total` bytes long), then reads the
/// array as `T` (C or Fortran order, either byte order); `source` is left at its end.
fn read_checked<T: NpyElement, R: Read + Seek>(mut source: R, total: u64, path: &Path, name: &str) -> Result<ArrayD<T>> {
    let mut prefix = vec![0u8; (MAX_HEADER_BYTES as u64 + 12).min(total) as usize];
    source.read_exact(&mut prefix).map_err(|err| array_error(path, name, err.to_string()))?;
    let header = NpyHeader::parse(&prefix).map_err(|reason| array_error(path, name, reason))?;
    header
        .check_length(total - header.data_offset as u64)
        .map_err(|reason| array_error(path, name, reason))?;
    let (order, code) = header.descr.split_at(1.min(header.descr.len()));
    let one_byte = std::mem::size_of::<T>() == 1;
    let big_endian = match order {
        "<" | "=" => false,
        ">" => true,
        "|" if one_byte => false,
        _ => return Err(array_error(path, name, format!("unsupported byte order in '{}'", header.descr))),
    };
    if code != T::TYPE_CODE {
        return Err(array_error(
            path,
            name,
            format!(
                "holds {} ('{}'), which this reader does not take as {}",
                describe_descr(&header.descr),
                header.descr,
                std::any::type_name::<T>()
            ),
        ));
    }
    source
        .seek(SeekFrom::Start(header.data_offset as u64))
        .map_err(|err| array_error(path, name, err.to_string()))?;
    // check_length has tied this size to the bytes really present.
    let mut bytes = vec![0u8; (total - header.data_offset as u64) as usize];
    source.read_exact(&mut bytes).map_err(|err| array_error(path, name, err.to_string()))?;
    let values: Vec<T> = bytes.chunks_exact(std::mem::size_of::<T>()).map(|b| T::decode(b, big_endian)).collect();
    let shape = IxDyn(&header.shape);
    let array = if header.fortran_order {
        ArrayD::from_shape_vec(shape.f(), values)
    } else {
        ArrayD::from_shape_vec(shape, values)
    };
    array.map_err(|err| array_error(path, name, err.to_string()))
}

/// Reads a whole `.npy` file with element type `T`, checking its header first.
pub fn read_npy<T: NpyElement>(path: &Path) -> Result<ArrayD<T>> {
    let file = File::open(path).map_err(|err| AdCorreError::io(path, err))?;
    let total = file.metadata().map_err(|err| AdCorreError::io(path, err))?.len();
    let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    read_checked(BufReader::new(file), total, path, &name)
}

/// Reads a `.npy` file of float32 or float64 values as float32 (float64 is converted); any
/// other element type is refused, naming it.
pub fn read_npy_f32(path: &Path) -> Result<ArrayD<f32>> {
    let mut file = File::open(path).map_err(|err| AdCorreError::io(path, err))?;
    let mut prefix = [0u8; 512];
    let read = file.read(&mut prefix).map_err(|err| AdCorreError::io(path, err))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    // A header too long for this peek is left to `read_npy`, which names the problem.
    let descr = NpyHeader::parse(&prefix[..read]).map(|h| h.descr).unwrap_or_default();
    match descr.as_str() {
        "<f8" => Ok(read_npy::<f64>(path)?.mapv(|v| v as f32)),
        "<f4" | "" => read_npy::<f32>(path),
        other => Err(array_error(
            path,
            &name,
            format!("holds {} ('{other}'); expected float32 ('<f4') or float64 ('<f8')", describe_descr(other)),
        )),
    }
}

/// An open `.npz` archive whose arrays are read by name, from a file or from memory. Only
/// stored (uncompressed) archives, as `numpy.savez` writes them.
pub struct NpzFile<R: Read + Seek = File> {
    path: PathBuf,
    archive: zip::ZipArchive<R>,
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
    /// Reads an archive from `source`; `path` names it in errors.
    pub fn new(path: &Path, source: R) -> Result<Self> {
        let archive = zip::ZipArchive::new(source).map_err(|err| array_error(path, "", format!("not a .npz archive: {err}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            archive,
        })
    }

    /// The names of the archive's arrays (without `.npy`).
    pub fn names(&mut self) -> Result<Vec<String>> {
        Ok(self
            .archive
            .file_names()
            .map(|name| name.trim_end_matches(".npy").to_string())
            .collect())
    }

    /// Reads the array `name` (with or without `.npy`) with element type `T`.
    pub fn array<T: NpyElement>(&mut self, name: &str) -> Result<ArrayD<T>> {
        let entry_name = if name.ends_with(".npy") { name.to_string() } else { format!("{name}.npy") };
        let mut entry = self
            .archive
            .by_name(&entry_name)
            .map_err(|err| array_error(&self.path, name, format!("no such array in the archive ({err})")))?;
        // Read what is really there (a stored entry's bytes are in the archive), not what the
        // entry's declared size promises.
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|err| array_error(&self.path, name, err.to_string()))?;
        let total = bytes.len() as u64;
        read_checked(Cursor::new(bytes), total, &self.path, name)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut text = header.to_string();
        while (10 + text.len() + 1) % 64 != 0 {
            text.push(' ');
        }
        text.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((text.len() as u16).to_le_bytes());
        bytes.extend(text.as_bytes());
        bytes.extend(data);
        bytes
    }

    #[test]
    fn header_fields_are_parsed() {
        let bytes = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", &[0; 24]);
        let header = NpyHeader::parse(&bytes).unwrap();
        assert_eq!(header.descr, "<f4");
        assert!(!header.fortran_order);
        assert_eq!(header.shape, vec![2, 3]);
        assert_eq!(header.data_offset % 64, 0);
        assert_eq!(header.data_bytes(), Some(24));
        let scalar = NpyHeader::parse(&npy("{'descr': '<f8', 'fortran_order': False, 'shape': (), }", &[0; 8])).unwrap();
        assert_eq!(scalar.shape, Vec::<usize>::new());
        assert_eq!(scalar.data_bytes(), Some(8));
    }

    #[test]
    fn a_header_claiming_more_than_the_data_is_refused_before_allocating() {
        // 2^60 float32 values claimed, 8 bytes present: reading must not try to allocate 4 EiB.
        let bytes = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1152921504606846976,), }", &[0; 8]);
        let err = read_checked::<f32, _>(Cursor::new(&bytes), bytes.len() as u64, Path::new("x.npy"), "x").unwrap_err();
        assert!(err.to_string().contains("8 bytes of data follow"), "{err}");
        let overflow = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", &[]);
        assert!(read_checked::<f32, _>(Cursor::new(&overflow), overflow.len() as u64, Path::new("x.npy"), "x").is_err());
    }

    #[test]
    fn wrong_element_types_are_named() {
        let bytes = npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", &[0; 8]);
        let err = read_checked::<f32, _>(Cursor::new(&bytes), bytes.len() as u64, Path::new("x.npy"), "x").unwrap_err();
        assert!(err.to_string().contains("holds int64 ('<i8')"), "{err}");
    }
}
