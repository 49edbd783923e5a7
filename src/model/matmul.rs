//! Matrix products on the CPU in f32, written straight into their output.
//!
//! candle's CPU matmul zero-fills each output on the calling thread before the parallel GEMM
//! overwrites it whole: in a SmolLM2 gradient pass, a serial memset of about a gigabyte per
//! window while the other core waits. Here the same GEMM (the `gemm` crate, on the same
//! threads) writes into memory nobody has touched.

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};

/// a (…, m, k) · b (…, k, n) with the same leading dimensions. In a gradient graph, or on
/// other devices and dtypes, this is candle's matmul.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.track_op() || b.track_op() {
        return a.matmul(b);
    }
    match cpu_f32(a, b)? {
        Some(c) => Ok(c),
        None => a.matmul(b),
    }
}

/// The element offset of each matrix of a (…, rows, cols) layout, in row-major batch order.
fn matrix_offsets(layout: &Layout) -> Vec<usize> {
    let (dims, strides) = (layout.dims(), layout.stride());
    let lead = dims.len() - 2;
    let mut offsets = vec![layout.start_offset()];
    for (&dim, &stride) in dims[..lead].iter().zip(&strides[..lead]) {
        offsets = offsets
            .iter()
            .flat_map(|&o| (0..dim).map(move |i| o + i * stride))
            .collect();
    }
    offsets
}

fn cpu_f32(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    let (ad, bd) = (a.dims(), b.dims());
    let rank = ad.len();
    if rank < 2
        || bd.len() != rank
        || ad[..rank - 2] != bd[..rank - 2]
        || ad[rank - 1] != bd[rank - 2]
        || a.dtype() != DType::F32
        || b.dtype() != DType::F32
    {
        return Ok(None);
    }
    let (m, k, n) = (ad[rank - 2], ad[rank - 1], bd[rank - 1]);
    if m == 0 || k == 0 || n == 0 {
        return Ok(None);
    }
    let (a_storage, a_layout) = a.storage_and_layout();
    let (b_storage, b_layout) = b.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(av)), Storage::Cpu(CpuStorage::F32(bv))) =
        (&*a_storage, &*b_storage)
    else {
        return Ok(None);
    };
    let (a_offsets, b_offsets) = (matrix_offsets(a_layout), matrix_offsets(b_layout));
    let (a_rs, a_cs) = (a_layout.stride()[rank - 2], a_layout.stride()[rank - 1]);
    let (b_rs, b_cs) = (b_layout.stride()[rank - 2], b_layout.stride()[rank - 1]);
    // The pool this runs in: one thread inside a single-threaded gradient pass.
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let len = a_offsets.len() * m * n;
    let mut out = Vec::<f32>::with_capacity(len);
    for (i, (&ao, &bo)) in a_offsets.iter().zip(&b_offsets).enumerate() {
        // SAFETY: candle's layouts keep every viewed element inside its storage, so the
        // strided reads stay in `av` and `bv`; matrix i is written at out[i·m·n..(i+1)·m·n],
        // inside the capacity. With read_dst false and k > 0 the GEMM writes every output
        // element and reads none, so the whole buffer is initialised before `set_len`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr().add(i * m * n),
                1,
                n as isize,
                false,
                av.as_ptr().add(ao),
                a_cs as isize,
                a_rs as isize,
                bv.as_ptr().add(bo),
                b_cs as isize,
                b_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
    // SAFETY: see above; every element of 0..len was written.
    unsafe { out.set_len(len) };
    let mut shape = ad.to_vec();
    shape[rank - 1] = n;
    Tensor::from_vec(out, shape, a.device()).map(Some)
}
