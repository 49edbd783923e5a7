//! Checkpoints in and out: resolving and loading models, saving compressed ones, GGUF conversion.

pub mod convert;
pub mod gguf_export;
pub mod gguf_meta;
pub mod gguf_pretok;
pub mod gguf_tokenizer;
pub mod gguf_vocab_out;
pub mod load;
pub mod save;
pub mod staging;
pub mod weights;
