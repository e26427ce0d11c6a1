//! Datasets and array files. Always here: the expression classes ([`Expression`]) and `.npy` /
//! `.npz` reading ([`npy`]). With the `train` feature: loaders for each format (one file per
//! format), preparation into a fast packed form, augmentation and the training input pipeline.

pub mod expression;
pub mod npy;

pub use expression::Expression;

#[cfg(feature = "train")]
pub mod affectnet;
#[cfg(feature = "train")]
pub mod augment;
#[cfg(feature = "train")]
pub mod dataset;
#[cfg(feature = "train")]
pub mod fer2013;
#[cfg(feature = "train")]
pub mod ferplus;
#[cfg(feature = "train")]
pub mod image_folder;
#[cfg(feature = "train")]
pub mod pipeline;
#[cfg(feature = "train")]
pub mod prepared;
#[cfg(feature = "train")]
pub mod rafdb;
#[cfg(feature = "train")]
pub mod synthetic;

#[cfg(feature = "train")]
pub use dataset::{load_dataset, DatasetName, DatasetType, FerDataset, ImageSource, Sample};
#[cfg(feature = "train")]
pub use prepared::{prepare, PackedImages};
