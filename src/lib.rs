//! grasp: layer compression of Llama-family models with GRASP
//! (Gradient-based Retention of Adaptive Singular Parameters, arXiv 2501.00339).
//!
//! The modules follow the pipeline: `model` (the trainable Llama), `data` (calibration text and
//! evaluation tasks), `grasp` (block influence, gradient attribution, selection, compression),
//! `eval` (perplexity and zero-shot tasks), `io` (loading, saving, GGUF conversion),
//! `pipeline` (whole runs: a compression and its report, the size/quality frontier) and `cli`.
//! Arrows point down: `cli` → `pipeline` → `grasp` / `eval` → `model` / `data` / `io`.

pub mod cli;
pub mod data;
pub mod eval;
pub mod grasp;
pub mod io;
pub mod model;
pub mod pipeline;
pub mod progress;
pub mod recovery;
pub mod runtime;
