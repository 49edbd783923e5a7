//! Checkpoints in and out: resolving and loading models, saving compressed ones, GGUF conversion.

pub mod convert;
pub mod gguf_export;
pub mod gguf_meta;
pub mod gguf_pretok;
pub mod gguf_tokenizer;
pub mod gguf_vocab_out;
pub mod hub;
pub mod interrupt;
pub mod load;
pub mod out_path;
pub mod save;
pub mod staging;
pub mod validate;
pub mod weights;
