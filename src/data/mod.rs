//! Datasets, their label conventions and array files.

pub mod expression;
pub mod npy;

pub use expression::Expression;
