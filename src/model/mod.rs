//! A Llama decoder written for gradients: every op on the path from a projection's singular
//! values to the loss carries a backward pass.

pub mod config;
pub mod kernels;
pub mod linear;
pub mod llama;
pub mod logits;
pub mod matmul;
pub mod ops;
pub mod softmax;

pub use config::LlamaConfig;
pub use linear::Linear;
pub use llama::Llama;
