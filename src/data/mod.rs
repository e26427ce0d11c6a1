//! Datasets: loaders for each format (one file per format), preparation into a fast packed
//! form, and the training input pipeline.

pub mod affectnet;
pub mod dataset;
pub mod expression;
pub mod fer2013;
pub mod ferplus;
pub mod image_folder;
pub mod npy;
pub mod rafdb;

pub use dataset::{load_dataset, DatasetName, DatasetType, FerDataset, ImageSource, Sample};
pub use expression::Expression;
pub mod augment;
pub mod prepared;

pub use prepared::{prepare, PackedImages};
pub mod pipeline;
pub mod synthetic;
