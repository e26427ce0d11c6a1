//! The Ad-Corre network: a Keras-faithful Xception backbone and the embedding heads.
//!
//! A network is built from its config on a device, runs on `[batch, 3, side, side]` images in
//! [0, 1] and saves with its [`ModelCard`] (what a user of the file needs to feed it right):
//!
//! ```
//! use adcorre::backend::{cpu_device, Cpu};
//! use adcorre::model::{AdCorreNetConfig, XceptionConfig};
//! use burn::tensor::{Distribution, Tensor};
//!
//! let device = cpu_device();
//! // A narrow Xception (1/8 width, 1 middle block), k = 3 heads of 32, 7 classes.
//! let config = AdCorreNetConfig::new()
//!     .with_backbone(XceptionConfig::new().with_width(0.125).with_middle_blocks(1))
//!     .with_num_heads(3)
//!     .with_embedding_dim(32);
//! let net = config.init::<Cpu>(&device);
//! let images = Tensor::<Cpu, 4>::random([2, 3, 48, 48], Distribution::Uniform(0.0, 1.0), &device);
//! let out = net.forward(images);
//! assert_eq!(out.logits.dims(), [2, 7]);
//! assert_eq!(out.embeddings.dims(), [3, 2, 32]); // [k, batch, dim], each row of unit length
//! ```

pub mod adcorre_net;
pub mod checkpoint;
pub mod heads;
pub mod layers;
pub(crate) mod record_check;
pub mod xception;

pub use adcorre_net::{global_average_pool, AdCorreNet, AdCorreNetConfig, AdCorreOutput, TestTimeViews};
pub use checkpoint::{load_model, parameter_count, save_model, ModelCard};
pub use heads::{concat_heads, l2_normalize, EmbeddingHeads, EmbeddingHeadsConfig};
pub use xception::{Xception, XceptionConfig};
