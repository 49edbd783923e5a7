//! Thin SVD of projection weights (faer on the CPU: candle has no SVD).

use anyhow::{anyhow, Result};
use candle_core::{DType, Device, Tensor};
use faer::Mat;

/// Precision the decomposition is computed in, whatever the model dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SvdDtype {
    F32,
    F64,
}

/// W = U · diag(S) · Vh with U (out, r), S (r) descending, Vh (r, in), r = min(out, in).
pub struct ThinSvd {
    pub u: Tensor,
    pub s: Tensor,
    pub vh: Tensor,
}

/// Decomposes a 2-D weight. U and Vh come back in `weight`'s dtype and device; S in f32 (f64
/// for an f64 weight), the precision its gradient is accumulated in.
pub fn thin_svd(weight: &Tensor, precision: SvdDtype) -> Result<ThinSvd> {
    let (out, inp) = weight.dims2()?;
    let host = weight.to_device(&Device::Cpu)?;
    let (u, s, vh) = match precision {
        SvdDtype::F32 => decompose::<f32>(&host, out, inp)?,
        SvdDtype::F64 => decompose::<f64>(&host, out, inp)?,
    };
    let device = weight.device();
    let dtype = weight.dtype();
    Ok(ThinSvd {
        u: u.to_dtype(dtype)?.to_device(device)?,
        s: s.to_dtype(if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        })?
        .to_device(device)?,
        vh: vh.to_dtype(dtype)?.to_device(device)?,
    })
}

/// The SVD of a (rows, cols) CPU tensor computed in `T`, as CPU tensors in `T`.
fn decompose<T>(host: &Tensor, rows: usize, cols: usize) -> Result<(Tensor, Tensor, Tensor)>
where
    T: faer::traits::RealField + Copy + candle_core::WithDType,
{
    let w: Vec<T> = host.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1()?;
    let (u, s, vh) = faer_svd(&w, rows, cols)?;
    let r = s.len();
    Ok((
        Tensor::from_vec(u, (rows, r), &Device::Cpu)?,
        Tensor::from_vec(s, r, &Device::Cpu)?,
        Tensor::from_vec(vh, (r, cols), &Device::Cpu)?,
    ))
}

/// Row-major (rows, cols) matrix → row-major U (rows, r), S (r), Vh (r, cols).
fn faer_svd<T>(w: &[T], rows: usize, cols: usize) -> Result<(Vec<T>, Vec<T>, Vec<T>)>
where
    T: faer::traits::RealField + Copy,
{
    let m = Mat::from_fn(rows, cols, |i, j| w[i * cols + j]);
    let svd = m
        .thin_svd()
        .map_err(|e| anyhow!("SVD of a {rows}x{cols} matrix did not converge: {e:?}"))?;
    let r = rows.min(cols);
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let u_rows = (0..rows * r).map(|k| u[(k / r, k % r)]).collect();
    let s = (0..r).map(|k| s[k]).collect();
    let vh = (0..r * cols).map(|k| v[(k % cols, k / cols)]).collect();
    Ok((u_rows, s, vh))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reconstruction_error(w: &Tensor, precision: SvdDtype) -> f32 {
        let d = thin_svd(w, precision).unwrap();
        let rebuilt =
            d.u.broadcast_mul(&d.s.unsqueeze(0).unwrap())
                .unwrap()
                .matmul(&d.vh)
                .unwrap();
        let err = (rebuilt - w).unwrap().sqr().unwrap().sum_all().unwrap();
        let norm = w.sqr().unwrap().sum_all().unwrap();
        (err.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt()
    }

    #[test]
    fn reconstructs_wide_and_tall_matrices() {
        for shape in [(7usize, 12usize), (12, 7)] {
            let w = Tensor::randn(0f32, 1., shape, &Device::Cpu).unwrap();
            assert!(reconstruction_error(&w, SvdDtype::F32) < 1e-5);
            assert!(reconstruction_error(&w, SvdDtype::F64) < 1e-6);
        }
    }

    #[test]
    fn singular_values_are_descending_and_nonnegative() {
        let w = Tensor::randn(0f32, 1., (9, 5), &Device::Cpu).unwrap();
        let s: Vec<f32> = thin_svd(&w, SvdDtype::F32).unwrap().s.to_vec1().unwrap();
        assert_eq!(s.len(), 5);
        assert!(s.windows(2).all(|p| p[0] >= p[1]) && s[4] >= 0.0);
    }
}
