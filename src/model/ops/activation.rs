//! The gated activation of Llama's MLP with an input-only backward.

use candle_core::{Result, Tensor};

use crate::model::autograd::InputOnly;
use crate::model::kernels;

/// The gated activation of Llama's MLP, silu(gate)·up. As candle's ops, the graph would keep
/// silu(gate) and the product beside gate and up: four (tokens, intermediate) tensors per
/// layer, the largest a gradient pass holds. This op keeps gate and up alone and computes
/// d gate = g·up·σ(1 + gate(1 − σ)) and d up = g·silu(gate) from them in the backward.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let value = silu_mul_value(&gate.detach(), &up.detach())?;
    if !gate.track_op() && !up.track_op() {
        return Ok(value);
    }
    gate.apply_op2(
        up,
        InputOnly::new("silu-mul", value, |x, _, g| {
            let (d_gate, d_up) = silu_mul_input_grads(g, &x[0], &x[1])?;
            Ok(vec![Some(d_gate), Some(d_up)])
        }),
    )
}

pub(super) fn silu_mul_value(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    match kernels::silu_mul(gate, up)? {
        Some(value) => Ok(value),
        None => candle_nn::ops::silu(gate)? * up,
    }
}

/// d gate = g·up·σ(1 + gate(1 − σ)) and d up = g·silu(gate).
pub(super) fn silu_mul_input_grads(
    g: &Tensor,
    gate: &Tensor,
    up: &Tensor,
) -> Result<(Tensor, Tensor)> {
    if let Some(grads) = kernels::silu_mul_backward(g, gate, up)? {
        return Ok(grads);
    }
    let sigmoid = candle_nn::ops::sigmoid(gate)?;
    let d_up = (g * (gate * &sigmoid)?)?;
    let slope = ((gate * (1.0 - &sigmoid)?)? + 1.0)?;
    let d_gate = ((g * up)? * (sigmoid * slope)?)?;
    Ok((d_gate, d_up))
}
