//! The Ad-Corre network: a Keras-faithful Xception backbone and the embedding heads.

pub mod adcorre_net;
pub mod checkpoint;
pub mod heads;
pub mod layers;
pub(crate) mod record_check;
pub mod xception;

pub use adcorre_net::{global_average_pool, AdCorreNet, AdCorreNetConfig, AdCorreOutput};
pub use checkpoint::{load_model, parameter_count, save_model, ModelCard};
pub use heads::{concat_heads, l2_normalize, EmbeddingHeads, EmbeddingHeadsConfig};
pub use xception::{Xception, XceptionConfig};
