//! A Llama decoder written for gradients: every op on the path from a projection's singular
//! values to the loss carries a backward pass.

pub(crate) mod autograd;
mod build;
pub mod config;
mod estimates;
pub mod kernels;
pub mod layer;
pub mod linear;
pub mod llama;
pub mod logits;
pub mod matmul;
pub mod numeric;
pub mod ops;
pub mod packed;
pub mod projection;
pub(crate) mod rotary;
pub mod softmax;

pub use config::LlamaConfig;
pub use linear::Linear;
pub use llama::Llama;
