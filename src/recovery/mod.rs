//! Recovery training (the paper's GRASP*): after compression, the compressed layers are
//! trained on instruction data while the rest of the model stays frozen.
//!
//! The loss of a step is the mean next-token cross-entropy over the response tokens of its
//! examples (every token with `train_on_inputs`); micro-batches each add their share of that
//! mean's gradient, so accumulation gives exactly the gradient of the whole batch. AdamW
//! (β = 0.9, 0.999, ε = 1e-8) updates f32 copies of the trainable tensors, with a linear
//! warm-up and a linear decay of the learning rate. Frozen layers above the trained ones pass
//! gradients through their input-only backward ([`crate::model::ops::frozen_residual`]), so no
//! gradient is ever computed for a frozen weight, and the layers below run without a graph.

mod micro;
pub mod plan;
pub mod train;
pub mod trainable;
