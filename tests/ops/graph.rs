//! What enters the autograd graph: which tensors get gradients, constants staying out of it,
//! half-precision gradients; and grasp's matmul on strided operands.

use super::*;

#[test]
fn next_token_loss_rejects_a_single_position() {
    let Some(dir) = crate::common::stories_dir() else {
        return;
    };
    let model = crate::common::load(&dir, DType::F32).model;
    let ids = Tensor::new(&[[3u32]], &Device::Cpu).unwrap();
    assert!(model.next_token_loss(&ids).is_err());
}

/// dL/dS of an SVD projection flows through both frozen matmuls, and neither U nor Vh gets a
/// gradient (candle's matmul backward would compute and keep one for each).
#[test]
fn svd_projection_gives_singular_values_and_only_them_a_gradient() {
    let rng = Gaussian::seeded(12);
    let (u, vh) = (
        rng.randn(&[6, 3], DType::F64),
        rng.randn(&[3, 4], DType::F64),
    );
    let s0 = rng.randn(&[3], DType::F64);
    let x = Var::from_tensor(&rng.randn(&[2, 5, 4], DType::F64)).unwrap();
    let probe = rng.randn(&[2, 5, 6], DType::F64);
    let loss_with = |s: Var| -> Result<Tensor> {
        let proj = Linear::Svd {
            u: u.clone(),
            s,
            vh: vh.clone(),
            bias: None,
        };
        (proj.forward(x.as_tensor())? * &probe)?.sum_all()
    };
    check_against_finite_differences(&|s| loss_with(Var::from_tensor(s)?), &s0);
    let s = Var::from_tensor(&s0).unwrap();
    let grads = loss_with(s.clone()).unwrap().backward().unwrap();
    assert!(grads.get(s.as_tensor()).is_some());
    assert!(grads.get(x.as_tensor()).is_some());
    assert!(
        grads.get(&u).is_none() && grads.get(&vh).is_none(),
        "a frozen weight got a gradient"
    );
}

/// Constant inputs give constant outputs: evaluation builds no graph.
#[test]
fn constant_inputs_stay_out_of_the_graph() {
    let rng = Gaussian::seeded(13);
    let x = rng.randn(&[1, 2, 4, 8], DType::F32);
    let (w, cos, sin) = (
        rng.randn(&[8], DType::F32),
        rng.randn(&[4, 4], DType::F32),
        rng.randn(&[4, 4], DType::F32),
    );
    for y in [
        ops::rms_norm(&x, &w, 1e-5).unwrap(),
        ops::causal_attention(&x, &x, &x, 0.5, 2, None).unwrap(),
        ops::rope(&x, &cos, &sin).unwrap(),
        ops::matmul_t(&x, &rng.randn(&[3, 8], DType::F32)).unwrap(),
    ] {
        assert!(!y.track_op());
    }
}

/// A weight that is in a graph after all keeps its gradient (through the composed form).
#[test]
fn a_trainable_weight_still_gets_its_gradient() {
    let rng = Gaussian::seeded(14);
    let x = Var::from_tensor(&rng.randn(&[2, 3, 8], DType::F64)).unwrap();
    let w0 = rng.randn(&[8], DType::F64);
    let probe = rng.randn(&[2, 3, 8], DType::F64);
    let grad_of_w = |norm: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| -> Tensor {
        let w = Var::from_tensor(&w0).unwrap();
        let loss = (norm(x.as_tensor(), w.as_tensor()).unwrap() * &probe)
            .unwrap()
            .sum_all()
            .unwrap();
        loss.backward()
            .unwrap()
            .get(w.as_tensor())
            .expect("no gradient for the weight")
            .clone()
    };
    let fast = grad_of_w(&|x, w| ops::rms_norm(x, w, 1e-5));
    let composed = grad_of_w(&|x, w| candle_nn::ops::rms_norm_slow(x, w, 1e-5));
    let err = max_abs_diff(&fast, &composed) / max_abs(&composed);
    assert!(
        err < F64_TOL,
        "weight gradient differs by {err:e} (relative)"
    );
}

/// Half-precision inputs get half-precision gradients, computed in f32: within bf16 rounding
/// (2⁻⁸ relative, a few roundings deep) of the gradient of the same inputs in f32.
#[test]
fn bf16_gradients_follow_the_f32_ones() {
    let rng = Gaussian::seeded(15);
    let x = rng.randn(&[1, 2, 3, 16], DType::BF16);
    let w = rng.randn(&[16], DType::BF16);
    let probe = rng.randn(&[1, 2, 3, 16], DType::F32);
    let loss = |x: &Tensor| -> Result<Tensor> {
        let w = w.to_dtype(x.dtype())?;
        let h = ops::rms_norm(x, &w, 1e-5)?;
        let h = ops::causal_attention(&h, &h, &h, 0.5, 2, None)?;
        (ops::at_least_f32(&h)? * &probe)?.sum_all()
    };
    let (_, half) = value_and_grad(&loss, &x);
    let (_, full) = value_and_grad(&loss, &x.to_dtype(DType::F32).unwrap());
    let err = max_abs_diff(&half, &full) / max_abs(&full);
    assert!(err < 0.05, "bf16 gradient differs by {err:e} (relative)");
}

/// grasp's matmul (src/model/matmul.rs) on transposed, narrowed and batched operands gives
/// candle's product of contiguous copies (candle itself refuses some of these layouts). The
/// freed NaN buffers of each output's size make it likely that an element the GEMM failed to
/// write would show.
#[test]
fn matmul_matches_candle_for_strided_and_batched_operands() {
    let rng = Gaussian::seeded(16);
    let randn = |dims: &[usize]| rng.randn(dims, DType::F32);
    let (x, w) = (randn(&[37, 19]), randn(&[23, 19]));
    let (q, k) = (randn(&[2, 3, 11, 8]), randn(&[2, 3, 16, 8]));
    let cases = [
        (x.clone(), w.t().unwrap()),
        (
            x.narrow(0, 5, 20).unwrap(),
            w.t().unwrap().contiguous().unwrap(),
        ),
        (x.t().unwrap(), randn(&[37, 7])),
        (q.clone(), k.narrow(2, 2, 12).unwrap().t().unwrap()),
        (k.t().unwrap(), randn(&[2, 3, 5, 16]).t().unwrap()),
        // Batch dimensions that are not contiguous either.
        (
            randn(&[2, 11, 3, 8]).transpose(1, 2).unwrap(),
            k.t().unwrap(),
        ),
    ];
    for (i, (a, b)) in cases.iter().enumerate() {
        let want = a
            .contiguous()
            .unwrap()
            .matmul(&b.contiguous().unwrap())
            .unwrap();
        drop(vec![f32::NAN; want.elem_count()]);
        let got = grasp::model::matmul::matmul(a, b).unwrap();
        assert_eq!(got.dims(), want.dims(), "case {i}");
        assert!(max_abs_diff(&got, &want) < 1e-5, "case {i}");
    }
}
