//! Element-wise and row-wise CPU kernels for f32, where candle's ops would take a serial pass
//! and a fresh buffer per op, and often one scalar libm call per element.
//!
//! The loops that do the arithmetic are `#[multiversion]` functions: the binary's baseline is
//! x86-64's SSE2, four floats a vector, and on a CPU with AVX2 or AVX-512 the same loops (with
//! the `#[inline(always)]` helpers they call) run compiled for eight or sixteen. Floating-point
//! order is the source's in every version (the reductions' lanes are explicit), so all give the
//! same bits. Relative to the GEMM microkernel's samples in a gradient pass from SmolLM2's
//! layer 12 (perf), these loops went from 9.8% to 6.0%.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use multiversion::multiversion;

/// e^x for x ≤ 0 within about 2 ulp, branch-free so that it vectorises (libm's `expf` is one
/// call per element). Below −87.3 the result would be subnormal and is flushed to 0: beside
/// the row maximum's e^0 = 1 it changes nothing a float can hold. NaN stays NaN.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for the n that occur (|n| ≤ 126).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Cephes' minimax polynomial for e^r on |r| ≤ ln2/2.
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = (p * r) * r + r + 1.0;
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let scale = f32::from_bits(((n_bits + 127).max(0) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        e * scale
    }
}

/// σ(x) from e^−|x| ≤ 1, so that no exponent overflows.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

/// The contiguous f32 elements of a CPU tensor, or None.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 || !t.is_contiguous() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => {
            let start = layout.start_offset();
            Some(f(&v[start..start + layout.shape().elem_count()]))
        }
        _ => None,
    }
}

/// Elements per work unit: large enough to amortise a steal, small enough to balance the
/// cores.
const CHUNK: usize = 16 * 1024;

/// N fresh n-element outputs, filled by `body(range, outputs' slices of that range)` on
/// rayon's pool, the one candle's matmuls run on (see [`crate::runtime::tune_process`]).
fn par_fill<const N: usize>(
    n: usize,
    body: impl Fn(std::ops::Range<usize>, [&mut [f32]; N]) + Sync,
) -> [Vec<f32>; N] {
    use rayon::prelude::*;
    let mut outs: [Vec<f32>; N] = std::array::from_fn(|_| vec![0f32; n]);
    let ptrs: [usize; N] = std::array::from_fn(|i| outs[i].as_mut_ptr() as usize);
    (0..n.div_ceil(CHUNK)).into_par_iter().for_each(|unit| {
        let (lo, hi) = (unit * CHUNK, ((unit + 1) * CHUNK).min(n));
        // SAFETY: each unit is handed to exactly one call, so the ranges written are
        // disjoint, and the buffers outlive the parallel loop.
        let slices = ptrs
            .map(|p| unsafe { std::slice::from_raw_parts_mut((p as *mut f32).add(lo), hi - lo) });
        body(lo..hi, slices);
    });
    outs
}

/// silu(gate)·up in one pass; None unless both are contiguous f32 on the CPU, of one shape.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if gate.shape() != up.shape() {
        return Ok(None);
    }
    let out = with_f32(gate, |x| {
        with_f32(up, |u| {
            let [y] = par_fill(x.len(), |r, [y]| silu_mul_chunk(y, &x[r.clone()], &u[r]));
            y
        })
    })
    .flatten();
    out.map(|y| Tensor::from_vec(y, gate.shape().clone(), gate.device()))
        .transpose()
}

/// The backward of silu(gate)·up for output gradient `g`, in one pass: (d gate, d up) with
/// d gate = g·up·σ(1 + gate(1 − σ)) and d up = g·gate·σ. None unless all three are contiguous
/// f32 on the CPU, of one shape.
pub fn silu_mul_backward(
    g: &Tensor,
    gate: &Tensor,
    up: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    if gate.shape() != up.shape() || g.shape() != gate.shape() {
        return Ok(None);
    }
    let grads = with_f32(g, |g| {
        with_f32(gate, |x| {
            with_f32(up, |u| {
                par_fill(g.len(), |r, [dg, du]| {
                    silu_mul_backward_chunk(dg, du, &g[r.clone()], &x[r.clone()], &u[r])
                })
            })
        })
    })
    .flatten()
    .flatten();
    let Some([d_gate, d_up]) = grads else {
        return Ok(None);
    };
    let (shape, device) = (gate.shape(), gate.device());
    Ok(Some((
        Tensor::from_vec(d_gate, shape.clone(), device)?,
        Tensor::from_vec(d_up, shape.clone(), device)?,
    )))
}

/// y = silu(x)·u over one chunk.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2"))]
fn silu_mul_chunk(y: &mut [f32], x: &[f32], u: &[f32]) {
    for ((y, &x), &u) in y.iter_mut().zip(x).zip(u) {
        *y = x * sigmoid(x) * u;
    }
}

/// [`silu_mul_backward`] over one chunk.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2"))]
fn silu_mul_backward_chunk(dg: &mut [f32], du: &mut [f32], g: &[f32], x: &[f32], u: &[f32]) {
    for i in 0..g.len() {
        let s = sigmoid(x[i]);
        du[i] = g[i] * x[i] * s;
        dg[i] = g[i] * u[i] * s * (1.0 + x[i] * (1.0 - s));
    }
}

/// Σ a·b over two rows, in [`LANES`] independent partial sums so that it vectorises (one
/// accumulator would chain every addition to the one before).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// Σ a, as [`dot`] does it.
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let mut sums = [0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for x in chunks {
        for i in 0..LANES {
            sums[i] += x[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// The largest of a (−inf when empty; NaNs are skipped), as [`dot`] does it.
#[inline(always)]
pub fn max(a: &[f32]) -> f32 {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let chunks = a.chunks_exact(LANES);
    // A compare and select, which is one vector instruction; f32::max adds NaN handling.
    let larger = |m: f32, x: f32| if x > m { x } else { m };
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| larger(m, x));
    for x in chunks {
        for i in 0..LANES {
            maxes[i] = larger(maxes[i], x[i]);
        }
    }
    maxes.iter().fold(tail, |m, &x| larger(m, x))
}

/// Independent partial results of [`dot`], [`sum`] and [`max`]: enough for the compiler to
/// keep them in vector registers (two AVX2 or one AVX-512 register of f32).
pub const LANES: usize = 16;

/// The input gradient of RMSNorm y = x·r·w, r = 1/√(mean(x²) + eps) per row, for output
/// gradient `g`: g·w·r − x·r³·mean(g·w·x), one parallel pass per row. None unless x and g are
/// contiguous f32 on the CPU, of one shape, and w is their last dimension.
pub fn rms_norm_backward(x: &Tensor, g: &Tensor, w: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    use rayon::prelude::*;
    let h = w.elem_count();
    if x.shape() != g.shape() || x.dims().last() != Some(&h) {
        return Ok(None);
    }
    let dx = with_f32(x, |x| {
        with_f32(g, |g| {
            with_f32(w, |w| {
                let mut dx = vec![0f32; x.len()];
                dx.par_chunks_mut(h)
                    .zip(x.par_chunks(h).zip(g.par_chunks(h)))
                    .for_each(|(dx, (x, g))| rms_norm_backward_row(dx, x, g, w, eps as f32));
                dx
            })
        })
    })
    .flatten()
    .flatten();
    dx.map(|dx| Tensor::from_vec(dx, x.shape().clone(), x.device()))
        .transpose()
}

/// [`rms_norm_backward`] of one row.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2"))]
fn rms_norm_backward_row(dx: &mut [f32], x: &[f32], g: &[f32], w: &[f32], eps: f32) {
    let h = x.len() as f32;
    let r = 1.0 / (dot(x, x) / h + eps).sqrt();
    for ((d, &g), &w) in dx.iter_mut().zip(g).zip(w) {
        *d = g * w;
    }
    let c = dot(dx, x) / h * r * r * r;
    for (d, &x) in dx.iter_mut().zip(x) {
        *d = *d * r - x * c;
    }
}

#[cfg(test)]
mod tests {
    use super::{exp_nonpositive, sigmoid};

    #[test]
    fn exp_is_within_two_ulp_of_libm_down_to_the_flush() {
        let mut x = 0.0f32;
        while x > -87.3 {
            let (fast, libm) = (exp_nonpositive(x), x.exp());
            let ulp = f32::from_bits(libm.to_bits() + 1) - libm;
            assert!(
                (fast - libm).abs() <= 2.0 * ulp,
                "exp({x}) = {fast}, libm {libm}"
            );
            x -= 0.000_731;
        }
        assert_eq!(exp_nonpositive(-88.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn sigmoid_is_accurate_on_both_sides() {
        for i in -1600..=1600 {
            let x = i as f32 * 0.05;
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            let got = sigmoid(x) as f64;
            assert!(
                (got - want).abs() <= 4e-7 * want,
                "σ({x}) = {got}, want {want}"
            );
        }
    }
}
