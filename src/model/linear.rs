//! The projections of a decoder layer in their three forms: dense, SVD with trainable singular
//! values, and factorized (two thin matrices, what a compressed checkpoint stores).

use candle_core::{DType, Result, Tensor, Var};

use super::numeric::{matmul_rows, matmul_t};

#[derive(Clone, Debug)]
pub enum Linear {
    /// `weight` is (out, in), as in HF checkpoints.
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// W = U · diag(S) · Vh with U (out, r), Vh (r, in). `s` is an f32 [`Var`] whatever the
    /// model dtype, so that dL/dS accumulates in full precision.
    Svd {
        u: Tensor,
        s: Var,
        vh: Tensor,
        bias: Option<Tensor>,
    },
    /// W = svd_out · svd_in with svd_in (r, in) = √S·Vh and svd_out (out, r) = U·√S.
    Factorized {
        svd_in: Tensor,
        svd_out: Tensor,
        bias: Option<Tensor>,
    },
    /// A frozen projection plus a trainable low-rank update (LoRA):
    /// y = base(x) + scale·(x·Aᵀ)·Bᵀ with A (r, in) and B (out, r).
    Lora {
        base: Box<Linear>,
        a: Tensor,
        b: Tensor,
        scale: f64,
    },
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (y, bias) = match self {
            Linear::Lora { base, a, b, scale } => {
                return base.forward(x)? + (matmul_t(&matmul_t(x, a)?, b)? * *scale)?;
            }
            Linear::Dense { weight, bias } => (matmul_t(x, weight)?, bias),
            Linear::Svd { u, s, vh, bias } => {
                let s = s.as_tensor().to_dtype(x.dtype())?;
                let z = matmul_t(x, vh)?.broadcast_mul(&s)?;
                (matmul_t(&z, u)?, bias)
            }
            Linear::Factorized {
                svd_in,
                svd_out,
                bias,
            } => (matmul_t(&matmul_t(x, svd_in)?, svd_out)?, bias),
        };
        match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    pub fn in_features(&self) -> usize {
        match self {
            Linear::Lora { base, .. } => base.in_features(),
            Linear::Dense { weight, .. } => weight.dims()[1],
            Linear::Svd { vh, .. } => vh.dims()[1],
            Linear::Factorized { svd_in, .. } => svd_in.dims()[1],
        }
    }

    pub fn out_features(&self) -> usize {
        match self {
            Linear::Lora { base, .. } => base.out_features(),
            Linear::Dense { weight, .. } => weight.dims()[0],
            Linear::Svd { u, .. } => u.dims()[0],
            Linear::Factorized { svd_out, .. } => svd_out.dims()[0],
        }
    }

    /// Rank of the stored form: min(in, out) for a dense weight.
    pub fn rank(&self) -> usize {
        match self {
            Linear::Lora { base, .. } => base.rank(),
            Linear::Dense { weight, .. } => weight.dims()[0].min(weight.dims()[1]),
            Linear::Svd { s, .. } => s.as_tensor().dims()[0],
            Linear::Factorized { svd_in, .. } => svd_in.dims()[0],
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        match self {
            Linear::Dense { bias, .. }
            | Linear::Svd { bias, .. }
            | Linear::Factorized { bias, .. } => bias.as_ref(),
            Linear::Lora { base, .. } => base.bias(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Linear::Lora { base, .. } => base.dtype(),
            Linear::Dense { weight, .. } => weight.dtype(),
            Linear::Svd { u, .. } => u.dtype(),
            Linear::Factorized { svd_in, .. } => svd_in.dtype(),
        }
    }

    /// Parameters stored by this form (weights and bias).
    pub fn num_params(&self) -> usize {
        let (i, o, r) = (self.in_features(), self.out_features(), self.rank());
        let weights = match self {
            Linear::Dense { .. } => i * o,
            Linear::Svd { .. } => r * (i + o + 1),
            Linear::Factorized { .. } => r * (i + o),
            Linear::Lora { base, a, b, .. } => {
                return base.num_params() + a.elem_count() + b.elem_count()
            }
        };
        weights + self.bias().map_or(0, |b| b.elem_count())
    }

    /// Parameters of this projection as a dense (out, in) weight and bias.
    pub fn num_params_merged(&self) -> usize {
        self.in_features() * self.out_features() + self.bias().map_or(0, |b| b.elem_count())
    }

    /// True when no tensor of this projection is in a gradient graph, so that a fused op may
    /// take it in and give back only [`Linear::input_grad`]. SVD form is never frozen: its
    /// singular values are what a gradient pass trains.
    pub fn is_frozen(&self) -> bool {
        let bias_frozen = self.bias().is_none_or(|b| !b.track_op());
        match self {
            Linear::Dense { weight, .. } => !weight.track_op() && bias_frozen,
            Linear::Svd { .. } => false,
            Linear::Factorized {
                svd_in, svd_out, ..
            } => !svd_in.track_op() && !svd_out.track_op() && bias_frozen,
            Linear::Lora { base, a, b, .. } => base.is_frozen() && !a.track_op() && !b.track_op(),
        }
    }

    /// g · W: the gradient of this projection's input, given that of its output (…, out).
    pub fn input_grad(&self, g: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense { weight, .. } => matmul_rows(g, weight),
            Linear::Svd { u, s, vh, .. } => {
                let s = s.as_tensor().detach().to_dtype(g.dtype())?;
                matmul_rows(&matmul_rows(g, u)?.broadcast_mul(&s)?, vh)
            }
            Linear::Factorized {
                svd_in, svd_out, ..
            } => matmul_rows(&matmul_rows(g, svd_out)?, svd_in),
            Linear::Lora { base, a, b, scale } => {
                base.input_grad(g)? + (matmul_rows(&matmul_rows(g, b)?, a)? * *scale)?
            }
        }
    }

    /// The (out, in) weight this projection computes with.
    pub fn dense_weight(&self) -> Result<Tensor> {
        match self {
            Linear::Dense { weight, .. } => Ok(weight.clone()),
            Linear::Svd { u, s, vh, .. } => {
                let s = s.as_tensor().to_dtype(u.dtype())?;
                u.broadcast_mul(&s.unsqueeze(0)?)?.matmul(vh)
            }
            Linear::Factorized {
                svd_in, svd_out, ..
            } => svd_out.matmul(svd_in),
            Linear::Lora { base, a, b, scale } => base.dense_weight()? + (b.matmul(a)? * *scale)?,
        }
    }

    /// The factorized form of an SVD projection: √S folded into both sides, so the two thin
    /// matrices have comparable scales (better for half precision than U and S·Vh).
    pub fn to_factorized(&self) -> Result<Linear> {
        match self {
            Linear::Svd { u, s, vh, bias } => {
                let root = s.as_tensor().detach().sqrt()?.to_dtype(u.dtype())?;
                Ok(Linear::Factorized {
                    svd_in: vh.broadcast_mul(&root.unsqueeze(1)?)?,
                    svd_out: u.broadcast_mul(&root.unsqueeze(0)?)?,
                    bias: bias.clone(),
                })
            }
            other => Ok(other.clone()),
        }
    }

    /// A LoRA projection with its update folded in: into a dense weight, or, over a factorized
    /// one, as r more rows and columns of its factors ([svd_out | scale·B]·[svd_in; A]), so that
    /// the savings stay. Any other form as it is.
    pub fn merge_adapter(&self) -> Result<Linear> {
        let Linear::Lora { base, a, b, scale } = self else {
            return Ok(self.clone());
        };
        let (a, b) = (
            a.to_dtype(base.dtype())?,
            (b * *scale)?.to_dtype(base.dtype())?,
        );
        match base.merge_adapter()?.to_factorized()? {
            Linear::Factorized {
                svd_in,
                svd_out,
                bias,
            } => Ok(Linear::Factorized {
                svd_in: Tensor::cat(&[&svd_in, &a], 0)?,
                svd_out: Tensor::cat(&[&svd_out, &b], 1)?,
                bias,
            }),
            other => Ok(Linear::Dense {
                weight: (other.dense_weight()? + b.matmul(&a)?)?,
                bias: other.bias().cloned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn svd_and_factorized_forms_compute_the_dense_product() {
        let dev = Device::Cpu;
        let u = Tensor::randn(0f32, 1., (6, 3), &dev).unwrap();
        let s = Var::new(&[3.0f32, 2.0, 0.5], &dev).unwrap();
        let vh = Tensor::randn(0f32, 1., (3, 4), &dev).unwrap();
        let svd = Linear::Svd {
            u,
            s,
            vh,
            bias: None,
        };
        let dense = Linear::Dense {
            weight: svd.dense_weight().unwrap(),
            bias: None,
        };
        let fact = svd.to_factorized().unwrap();
        let x = Tensor::randn(0f32, 1., (2, 5, 4), &dev).unwrap();
        let want = dense.forward(&x).unwrap();
        for form in [&svd, &fact] {
            let got = form.forward(&x).unwrap();
            assert_eq!(got.dims(), &[2, 5, 6]);
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
        }
        assert_eq!(fact.num_params(), 3 * (4 + 6));
        assert_eq!(fact.rank(), 3);
    }
}
