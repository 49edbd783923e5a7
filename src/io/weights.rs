//! Reading safetensors weights.
//!
//! candle's memory-mapped VarBuilder copies every tensor out of a map it keeps until the model
//! is built, and the mapped pages count as resident while it lives: loading peaked at twice
//! the weights (1.08 GB for SmolLM2-135M's 0.53 GB), the process's peak for a whole
//! compression. Here each tensor is read into its own buffer with ordinary reads, so the file
//! stays in the page cache and only the copies are resident.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Metadata, TensorInfo};

/// Bytes of the little-endian header length that starts a safetensors file.
const HEADER_LEN_BYTES: u64 = 8;

/// A safetensors file's tensor table and where its data starts.
struct Header {
    metadata: Metadata,
    data_start: u64,
}

fn read_header(file: &mut File, path: &Path) -> Result<Header> {
    let not_safetensors = || format!("{} is not a safetensors file", path.display());
    let mut len = [0u8; HEADER_LEN_BYTES as usize];
    file.read_exact(&mut len).with_context(not_safetensors)?;
    let n = u64::from_le_bytes(len);
    let file_len = file.metadata()?.len();
    if n > file_len - HEADER_LEN_BYTES {
        bail!("{}: header length {n} runs past the end", not_safetensors());
    }
    let mut json = vec![0u8; n as usize];
    file.read_exact(&mut json).with_context(not_safetensors)?;
    let metadata: Metadata = serde_json::from_slice(&json).with_context(not_safetensors)?;
    let data_start = HEADER_LEN_BYTES + n;
    for (name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        let want = info.shape.iter().product::<usize>() * info.dtype.bitsize() / 8;
        if end < start || end - start != want || data_start + end as u64 > file_len {
            bail!(
                "{}: tensor {name} has data offsets {start}..{end} for {want} bytes in a file of {file_len}",
                path.display()
            );
        }
    }
    Ok(Header {
        metadata,
        data_start,
    })
}

fn read_tensor(file: &mut File, header: &Header, info: &TensorInfo) -> Result<Tensor> {
    let Some(exponent) = exponent_bits(info.dtype) else {
        bail!(
            "its dtype is {:?}, not a floating-point type (f32, f16, bf16 or f64)",
            info.dtype
        );
    };
    let (start, end) = info.data_offsets;
    let mut bytes = vec![0u8; end - start];
    file.seek(SeekFrom::Start(header.data_start + start as u64))?;
    file.read_exact(&mut bytes)?;
    if has_non_finite(&bytes, exponent) {
        bail!("it holds NaN or infinite values");
    }
    let dtype = DType::try_from(info.dtype)?;
    Ok(Tensor::from_raw_buffer(
        &bytes,
        dtype,
        &info.shape,
        &Device::Cpu,
    )?)
}

/// The exponent mask of a floating-point safetensors dtype (None for the others), whose
/// bits are all set in exactly the NaN and infinite values.
fn exponent_bits(dtype: safetensors::Dtype) -> Option<u64> {
    use safetensors::Dtype;
    match dtype {
        Dtype::F16 => Some(0x7c00),
        Dtype::BF16 => Some(0x7f80),
        Dtype::F32 => Some(0x7f80_0000),
        Dtype::F64 => Some(0x7ff0_0000_0000_0000),
        _ => None,
    }
}

/// Whether the little-endian floats in `bytes`, of the width `exponent`'s mask implies,
/// include a NaN or an infinity.
fn has_non_finite(bytes: &[u8], exponent: u64) -> bool {
    let width = match exponent {
        0..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    };
    bytes.chunks_exact(width).any(|value| {
        let mut word = [0u8; 8];
        word[..width].copy_from_slice(value);
        u64::from_le_bytes(word) & exponent == exponent
    })
}

/// Every tensor of the (sharded) checkpoint, converted to `dtype` on `device`.
pub fn read_weights(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for path in files {
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let header = read_header(&mut file, path)?;
        for (name, info) in header.metadata.tensors() {
            let t = read_tensor(&mut file, &header, info)
                .with_context(|| format!("tensor {name} of {}", path.display()))?;
            tensors.insert(name, t.to_dtype(dtype)?.to_device(device)?);
        }
    }
    Ok(tensors)
}

/// The floating-point dtype the checkpoint stores its weights in (f32 when it has none).
pub fn checkpoint_dtype(path: &Path) -> Result<DType> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let header = read_header(&mut file, path)?;
    let float = header
        .metadata
        .tensors()
        .into_values()
        .map(|info| info.dtype)
        .find(|d| {
            matches!(
                d,
                safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
            )
        });
    Ok(match float {
        Some(safetensors::Dtype::F16) => DType::F16,
        Some(safetensors::Dtype::BF16) => DType::BF16,
        _ => DType::F32,
    })
}
