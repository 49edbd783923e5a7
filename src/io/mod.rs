//! Checkpoints in and out: resolving and loading models, saving compressed ones, GGUF conversion.

pub mod convert;
pub mod gguf_tokenizer;
pub mod load;
pub mod save;
pub mod staging;
pub mod weights;
