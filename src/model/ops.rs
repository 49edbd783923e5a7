//! Fast kernels with hand-written, input-only backward passes.
//!
//! In a GRASP gradient pass the only trainable tensors are the singular values: every weight is
//! frozen. candle's fused `rms_norm`, `softmax_last_dim` and `rope` carry no backward at all (in
//! a graph they act as constants, so dL/dS comes out None or silently wrong), its matmul backward
//! also computes the gradient of every frozen weight, and the composed forms build slow backward
//! graphs over large tensors. Each op here runs the fast kernel on the detached input and, when
//! that input is in a gradient graph, attaches the gradient with respect to the input alone.
//! When an operand that should be frozen is in a graph after all, the op falls back to candle's
//! composed, differentiable form so that no gradient is silently dropped.
//!
//! The graph plumbing is in [`super::autograd`], the shared numeric helpers in
//! [`super::numeric`]; this module gathers the ops by name.

mod activation;
mod attention;
mod frozen;
mod inference;
mod loss;
mod norm;

pub use super::numeric::{at_least_f32, matmul_t};
pub use activation::silu_mul;
pub use attention::{causal_attention, merge_heads, rope, split_heads, ATTENTION_BLOCK};
pub use frozen::{frozen_attention, frozen_mlp, frozen_residual, BranchBackward};
pub use inference::{masked_attention, target_log_probs, MASKED_SCORES_BYTES};
pub use loss::linear_cross_entropy;
pub use norm::rms_norm;
