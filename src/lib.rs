//! # adcorre
//!
//! Facial expression recognition with the Ad-Corre method (Fard & Mahoor, IEEE Access 2022)
//! on the [Burn](https://burn.dev) deep-learning framework: a Keras-faithful Xception with k
//! L2-normalised embedding heads, generic over Burn backends (CPU `flex` / `ndarray`, CUDA).
//!
//! ```no_run
//! use adcorre::backend::{cpu_device, Cpu};
//! use adcorre::model::{AdCorreNetConfig, ModelCard, save_model, load_model};
//! use burn::tensor::{Distribution, Tensor};
//!
//! let device = cpu_device();
//! let config = AdCorreNetConfig::new(); // the published architecture: k = 7, 7 classes
//! let net = config.init::<Cpu>(&device);
//! let images = Tensor::<Cpu, 4>::random([1, 3, 224, 224], Distribution::Uniform(0.0, 1.0), &device);
//! let out = net.forward(images);
//! assert_eq!(out.embeddings.dims(), [7, 1, 256]);
//! save_model(&net, &ModelCard::new(config), "net.mpk".as_ref())?;
//! let (reloaded, card) = load_model::<Cpu>("net.mpk".as_ref(), &device)?;
//! # Ok::<(), adcorre::AdCorreError>(())
//! ```

#![warn(missing_docs)]

pub mod atomic_file;
pub mod backend;
pub mod data;
pub mod detect;
pub mod error;
pub mod import;
pub mod infer;
#[cfg(feature = "train")]
pub mod loss;
pub mod metrics;
pub mod model;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "train")]
pub mod train;

pub use error::{AdCorreError, Result};

/// The README's code examples, compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
