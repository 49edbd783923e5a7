//! The fast ops with hand-written input-only backward passes (src/model/ops.rs): each gradient
//! against central finite differences in f64, and each op against candle's composed,
//! differentiable form (forward and gradient); in `graph`, what enters the autograd graph and
//! in which dtype.

mod graph;

use crate::common::{max_abs_diff, Gaussian};
use candle_core::{DType, Device, Result, Tensor, Var, D};
use grasp::model::linear::Linear;
use grasp::model::ops;

/// A function of one tensor.
type Op<'a> = &'a dyn Fn(&Tensor) -> Result<Tensor>;
type BoxedOp = Box<dyn Fn(&Tensor) -> Result<Tensor>>;

fn max_abs(a: &Tensor) -> f64 {
    max_abs_diff(a, &a.zeros_like().unwrap())
}

/// The value of `loss` at `x` and its autograd gradient with respect to `x`.
fn value_and_grad(loss: Op, x: &Tensor) -> (Tensor, Tensor) {
    let var = Var::from_tensor(x).unwrap();
    let value = loss(var.as_tensor()).unwrap();
    let grads = value.backward().unwrap();
    let grad = grads
        .get(var.as_tensor())
        .expect("no gradient for the input")
        .clone();
    assert_eq!(grad.dtype(), x.dtype());
    assert_eq!(grad.dims(), x.dims());
    (value, grad)
}

/// Central finite differences in f64: with h = 1e-5 the quotient is accurate to ~1e-9, so a
/// 1e-6 relative bound fails on any wrong term of the hand-written gradient.
fn check_against_finite_differences(loss: Op, x0: &Tensor) {
    let (_, grad) = value_and_grad(loss, x0);
    let grad: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
    let base: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
    let h = 1e-5;
    let at = |i: usize, delta: f64| -> f64 {
        let mut x = base.clone();
        x[i] += delta;
        let x = Tensor::from_vec(x, x0.shape(), &Device::Cpu).unwrap();
        loss(&x).unwrap().to_scalar().unwrap()
    };
    for (i, g) in grad.iter().enumerate() {
        let fd = (at(i, h) - at(i, -h)) / (2.0 * h);
        assert!(
            (fd - g).abs() < 1e-6 * (1.0 + fd.abs()),
            "element {i}: finite difference {fd} vs autograd {g}"
        );
    }
}

/// Two scalar functions agree in value and in gradient with respect to `x`.
fn check_against_composed(fast: Op, composed: Op, x: &Tensor, tol: f64) {
    let (fast_value, fast_grad) = value_and_grad(fast, x);
    let (want_value, want_grad) = value_and_grad(composed, x);
    let value_err = max_abs_diff(&fast_value, &want_value) / (1.0 + max_abs(&want_value));
    let grad_err = max_abs_diff(&fast_grad, &want_grad) / (1.0 + max_abs(&want_grad));
    assert!(value_err < tol, "value differs by {value_err:e} (relative)");
    assert!(
        grad_err < tol,
        "gradient differs by {grad_err:e} (relative)"
    );
}

/// An op under test on an input `x`: the fast form and candle's composed, differentiable form.
struct Case {
    x: Tensor,
    fast: BoxedOp,
    composed: BoxedOp,
}

/// Tolerance of the f64 comparisons: both forms compute the same formula, with operations
/// grouped differently, so they agree to a few hundred ulps of f64 (2.2e-16) at most.
const F64_TOL: f64 = 1e-12;

/// Tolerance of the f32 comparisons: the fused kernels and the composed forms sum the same O(1)
/// terms (at most 16 per reduction here) in different orders, so they differ by a few ulps of
/// f32 (1.2e-7) times the number of terms.
const F32_TOL: f64 = 1e-5;

/// In f64 the op's gradient matches finite differences and both forms agree to rounding; in
/// f32 (where the fused kernels run) both forms agree within [`F32_TOL`]. Each output is
/// weighted by a random probe so that every output element contributes to the checked loss.
/// The case draws its random inputs from the generator it is given (seeded by `seed`).
fn check(seed: u64, case: impl Fn(&Gaussian, DType) -> Case) {
    let rng = Gaussian::seeded(seed);
    for dtype in [DType::F64, DType::F32] {
        let Case { x, fast, composed } = case(&rng, dtype);
        let probe = rng.randn(fast(&x).unwrap().dims(), dtype);
        let fast = |x: &Tensor| (fast(x)? * &probe)?.sum_all();
        let composed = |x: &Tensor| (composed(x)? * &probe)?.sum_all();
        if dtype == DType::F64 {
            check_against_finite_differences(&fast, &x);
            check_against_composed(&fast, &composed, &x, F64_TOL);
        } else {
            check_against_composed(&fast, &composed, &x, F32_TOL);
        }
    }
}

#[test]
fn rms_norm_matches_finite_differences_and_the_composed_form() {
    check(1, |rng, dtype| {
        // 19: two vector chunks of the fused kernel's sums and a remainder.
        let w = rng.randn(&[19], dtype);
        let w2 = w.clone();
        Case {
            x: rng.randn(&[2, 3, 19], dtype),
            fast: Box::new(move |x| ops::rms_norm(x, &w, 1e-5)),
            composed: Box::new(move |x| candle_nn::ops::rms_norm_slow(x, &w2, 1e-5)),
        }
    });
}

/// Gate and up are the two halves of one input, so that both get their gradient checked.
#[test]
fn silu_mul_matches_finite_differences_and_the_composed_form() {
    check(2, |rng, dtype| Case {
        x: (rng.randn(&[2, 3, 5, 16], dtype) * 3.0).unwrap(),
        fast: Box::new(|x| ops::silu_mul(&x.get(0)?, &x.get(1)?)),
        composed: Box::new(|x| candle_nn::ops::silu(&x.get(0)?)? * x.get(1)?),
    });
}

/// The composed, differentiable attention: keys and values repeated for every query head, the
/// full score matrix masked above the diagonal, candle's composed softmax.
fn composed_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (groups, t) = (q.dim(1)? / k.dim(1)?, q.dim(2)?);
    let k = candle_transformers::utils::repeat_kv(k.clone(), groups)?;
    let v = candle_transformers::utils::repeat_kv(v.clone(), groups)?;
    let mask: Vec<f64> = (0..t * t)
        .map(|n| {
            if n % t > n / t {
                f64::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), q.device())?.to_dtype(q.dtype())?;
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
    candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&v)
}

/// Attention of 4 query heads over 2 key/value heads and 8 positions, in query blocks of 3 (so
/// the last block is short), checked with respect to each of q, k and v.
#[test]
fn causal_attention_matches_finite_differences_and_the_composed_form() {
    for which in 0..3 {
        check(3, |rng, dtype| {
            let qkv = [
                rng.randn(&[1, 4, 8, 4], dtype),
                rng.randn(&[1, 2, 8, 4], dtype),
                rng.randn(&[1, 2, 8, 4], dtype),
            ];
            let (fixed, fixed2) = (qkv.clone(), qkv.clone());
            let with = move |fixed: &[Tensor; 3], x: &Tensor| {
                let mut args = fixed.clone();
                args[which] = x.clone();
                args
            };
            Case {
                x: qkv[which].clone(),
                fast: Box::new(move |x| {
                    let [q, k, v] = with(&fixed, x);
                    ops::causal_attention(&q, &k, &v, 0.5, 3, None)
                }),
                composed: Box::new(move |x| {
                    let [q, k, v] = with(&fixed2, x);
                    composed_attention(&q, &k, &v, 0.5)
                }),
            }
        });
    }
}

/// A frozen projection (out, in): dense, or factorized through rank 3 (so that both forms'
/// input gradients are checked). Weights are scaled by 1/√fan-in, as in a trained model, so
/// that activations stay O(1) through a chain of projections and [`F32_TOL`] holds for it.
fn frozen_projection(
    rng: &Gaussian,
    out: usize,
    inp: usize,
    factorized: bool,
    dtype: DType,
) -> Linear {
    let scaled = |shape: &[usize]| (rng.randn(shape, dtype) / (shape[1] as f64).sqrt()).unwrap();
    if factorized {
        Linear::Factorized {
            svd_in: scaled(&[3, inp]),
            svd_out: scaled(&[out, 3]),
            bias: None,
        }
    } else {
        Linear::Dense {
            weight: scaled(&[out, inp]),
            bias: Some(rng.randn(&[out], dtype)),
        }
    }
}

/// RMSNorm from candle's differentiable ops.
fn composed_rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&r)?.broadcast_mul(weight)
}

/// A residual block of `hidden` features: its norm's weight, and the block as one op
/// (`frozen_residual` around `branch`) and composed (`x + composed(rms_norm(x))`).
fn residual_case(
    rng: &Gaussian,
    dtype: DType,
    shape: &[usize],
    branch: impl Fn(&Tensor) -> Result<(Tensor, ops::BranchBackward)> + 'static,
    composed: impl Fn(&Tensor) -> Result<Tensor> + 'static,
) -> Case {
    let norm = (rng.randn(&[shape[shape.len() - 1]], dtype) + 1.0).unwrap();
    let norm2 = norm.clone();
    let eps = 1e-5;
    Case {
        x: rng.randn(shape, dtype),
        fast: Box::new(move |x| ops::frozen_residual(x, &norm, eps, &branch)),
        composed: Box::new(move |x| x + composed(&composed_rms_norm(x, &norm2, eps)?)?),
    }
}

/// x + down(silu(gate(h))·up(h)), h = rms_norm(x), over 8 features and 16 intermediate ones.
#[test]
fn frozen_mlp_block_matches_finite_differences_and_the_composed_form() {
    for factorized in [false, true] {
        check(4, |rng, dtype| {
            let gate = frozen_projection(rng, 16, 8, factorized, dtype);
            let up = frozen_projection(rng, 16, 8, !factorized, dtype);
            let down = frozen_projection(rng, 8, 16, factorized, dtype);
            let (gate2, up2, down2) = (gate.clone(), up.clone(), down.clone());
            residual_case(
                rng,
                dtype,
                &[2, 5, 8],
                move |h| ops::frozen_mlp(h, &gate, &up, &down),
                move |h| {
                    let act = (candle_nn::ops::silu(&gate2.forward(h)?)? * up2.forward(h)?)?;
                    down2.forward(&act)
                },
            )
        });
    }
}

/// x + o(attention(rope(q(h)), rope(k(h)), v(h))), h = rms_norm(x): 16 features, 4 query
/// heads over 2 key/value heads of 4 dimensions, 8 positions in query blocks of 3; against
/// rope_slow and the composed attention.
#[test]
fn frozen_attention_block_matches_finite_differences_and_the_composed_form() {
    for factorized in [false, true] {
        check(5, |rng, dtype| {
            let (t, d) = (8, 4);
            let angles = rng.randn(&[t, d / 2], DType::F64);
            let cos = angles.cos().unwrap().to_dtype(dtype).unwrap();
            let sin = angles.sin().unwrap().to_dtype(dtype).unwrap();
            let projections = [
                frozen_projection(rng, 4 * d, 16, factorized, dtype),
                frozen_projection(rng, 2 * d, 16, !factorized, dtype),
                frozen_projection(rng, 2 * d, 16, factorized, dtype),
                frozen_projection(rng, 16, 4 * d, !factorized, dtype),
            ];
            let [q2, k2, v2, o2] = projections.clone();
            let (cos2, sin2) = (cos.clone(), sin.clone());
            residual_case(
                rng,
                dtype,
                &[2, t, 16],
                move |h| {
                    let [q, k, v, o] = &projections;
                    ops::frozen_attention(h, [q, k, v, o], 4, 2, &cos, &sin, 3, None)
                },
                move |h| {
                    let split = |y: Tensor, n: usize| y.reshape((2, t, n, d))?.transpose(1, 2);
                    let q = split(q2.forward(h)?, 4)?;
                    let (k, v) = (split(k2.forward(h)?, 2)?, split(v2.forward(h)?, 2)?);
                    let q = candle_nn::rotary_emb::rope_slow(&q.contiguous()?, &cos2, &sin2)?;
                    let k = candle_nn::rotary_emb::rope_slow(&k.contiguous()?, &cos2, &sin2)?;
                    o2.forward(&ops::merge_heads(&composed_attention(&q, &k, &v, 0.5)?)?)
                },
            )
        });
    }
}

/// The block size changes how the work is cut, not the result.
#[test]
fn causal_attention_blocks_agree() {
    let rng = Gaussian::seeded(10);
    let (q, k, v) = (
        rng.randn(&[2, 6, 20, 8], DType::F32),
        rng.randn(&[2, 2, 20, 8], DType::F32),
        rng.randn(&[2, 2, 20, 8], DType::F32),
    );
    let whole = ops::causal_attention(&q, &k, &v, 0.3, 20, None).unwrap();
    for block in [1, 7, 16, 64] {
        let blocked = ops::causal_attention(&q, &k, &v, 0.3, block, None).unwrap();
        assert!(max_abs_diff(&whole, &blocked) < 1e-5, "block {block}");
    }
}

/// Sequences packed in one row attend only within themselves: the value and the input
/// gradients are those of each sequence run alone (f64).
#[test]
fn packed_causal_attention_is_each_sequence_alone() {
    let rng = Gaussian::seeded(12);
    let lens = [5usize, 1, 9, 3];
    let t: usize = lens.iter().sum();
    let vars = [6, 2, 2].map(|h| Var::from_tensor(&rng.randn(&[1, h, t, 8], DType::F64)).unwrap());
    let r = rng.randn(&[1, 6, t, 8], DType::F64);
    let [q, k, v] = vars.each_ref().map(|x| x.as_tensor());
    let packed = ops::causal_attention(q, k, v, 0.3, 4, Some(&lens)).unwrap();
    let grads = (&packed * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut start = 0;
    for len in lens {
        let part = |x: &Tensor| x.narrow(2, start, len).unwrap();
        let alone_vars = [q, k, v].map(|x| Var::from_tensor(&part(x)).unwrap());
        let [qa, ka, va] = alone_vars.each_ref().map(|x| x.as_tensor());
        let alone = ops::causal_attention(qa, ka, va, 0.3, 4, None).unwrap();
        assert!(max_abs_diff(&part(&packed), &alone) < 1e-12, "length {len}");
        let alone_grads = (&alone * &part(&r))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (var, a) in vars.iter().zip(&alone_vars) {
            let g = grads.get(var.as_tensor()).unwrap();
            let diff = max_abs_diff(&part(g), alone_grads.get(a.as_tensor()).unwrap());
            assert!(diff < 1e-12, "length {len}: {diff}");
        }
        start += len;
    }
    assert!(ops::causal_attention(q, k, v, 0.3, 4, Some(&[5, 1])).is_err());
}

/// Under the causal mask, masked attention is causal attention, however many rows it takes
/// at a time; it refuses inputs in a gradient graph.
#[test]
fn masked_attention_under_the_causal_mask_is_causal_attention() {
    let rng = Gaussian::seeded(11);
    let (b, t) = (3, 12);
    let (q, k, v) = (
        rng.randn(&[b, 6, t, 8], DType::F32),
        rng.randn(&[b, 2, t, 8], DType::F32),
        rng.randn(&[b, 2, t, 8], DType::F32),
    );
    let mask: Vec<f32> = (0..b * t * t)
        .map(|n| {
            if n % t > (n / t) % t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (b, 1, 1, t, t), &Device::Cpu).unwrap();
    let causal = ops::causal_attention(&q, &k, &v, 0.3, 5, None).unwrap();
    let one_row = 6 * t * t * 4;
    for score_bytes in [0, one_row, 2 * one_row, usize::MAX] {
        let masked = ops::masked_attention(&q, &k, &v, 0.3, &mask, score_bytes).unwrap();
        let diff = max_abs_diff(&causal, &masked);
        assert!(diff < 1e-5, "{score_bytes} bytes of scores: {diff}");
    }
    let tracked = Var::from_tensor(&q).unwrap();
    let err = ops::masked_attention(tracked.as_tensor(), &k, &v, 0.3, &mask, usize::MAX);
    assert!(err.is_err());
}

#[test]
fn rope_matches_finite_differences_and_the_composed_form() {
    check(6, |rng, dtype| {
        let (t, d) = (5, 8);
        let angles = rng.randn(&[t, d / 2], DType::F64);
        let cos = angles.cos().unwrap().to_dtype(dtype).unwrap();
        let sin = angles.sin().unwrap().to_dtype(dtype).unwrap();
        let (cos2, sin2) = (cos.clone(), sin.clone());
        Case {
            x: rng.randn(&[2, 3, t, d], dtype),
            fast: Box::new(move |x| ops::rope(x, &cos, &sin)),
            composed: Box::new(move |x| candle_nn::rotary_emb::rope_slow(x, &cos2, &sin2)),
        }
    });
}

#[test]
fn frozen_matmul_matches_finite_differences_and_the_composed_form() {
    check(7, |rng, dtype| {
        let w = rng.randn(&[7, 5], dtype);
        let w2 = w.clone();
        Case {
            x: rng.randn(&[2, 3, 5], dtype),
            fast: Box::new(move |x| ops::matmul_t(x, &w)),
            composed: Box::new(move |x| x.broadcast_matmul(&w2.t()?)),
        }
    });
}

/// candle's weighted cross-entropy of the full logits x·wᵀ.
fn composed_cross_entropy(
    x: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(&x.matmul(&w.t()?)?, D::Minus1)?;
    let picked = log_p.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    (picked * weights)?.sum_all()?.neg()
}

/// 600 rows, so the head runs in blocks of 256, 256 and 88 (f32 through the fused CPU kernel,
/// f64 through candle's ops); one row has weight 0 (the last position of a window) and must
/// contribute nothing.
#[test]
fn linear_cross_entropy_matches_finite_differences_and_the_composed_form() {
    check(8, |rng, dtype| {
        let rows = 600;
        let w = (rng.randn(&[11, 6], dtype) * 2.0).unwrap();
        let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 7) % 11).collect();
        let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
        let weights: Vec<f64> = (0..rows)
            .map(|i| if i == 5 { 0.0 } else { 0.01 + i as f64 * 1e-5 })
            .collect();
        let weights = Tensor::new(weights.as_slice(), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let (w2, targets2, weights2) = (w.clone(), targets.clone(), weights.clone());
        Case {
            x: rng.randn(&[rows, 6], dtype),
            fast: Box::new(move |x| ops::linear_cross_entropy(x, &w, &targets, &weights)),
            composed: Box::new(move |x| composed_cross_entropy(x, &w2, &targets2, &weights2)),
        }
    });
}
