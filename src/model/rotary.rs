//! The rotary position embedding's cos/sin tables, with Llama 3's frequency scaling.

use candle_core::{DType, Device, Result, Tensor};

use super::config::LlamaConfig;

/// cos/sin tables of the rotary embedding, (max_positions, head_dim / 2).
#[derive(Clone, Debug)]
pub(crate) struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    pub(crate) fn new(cfg: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64);
                llama3_scaled(f, cfg) as f32
            })
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let freqs = positions.broadcast_mul(&inv_freq)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    pub(crate) fn tables(&self, seq_len: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.narrow(0, 0, seq_len)?,
            self.sin.narrow(0, 0, seq_len)?,
        ))
    }

    /// Tables (batch, seq, head_dim / 2) for the u32 (batch, seq) `positions`.
    pub(crate) fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let pick = |table: &Tensor| -> Result<Tensor> {
            let half = table.dim(1)?;
            table.index_select(&flat, 0)?.reshape((b, t, half))
        };
        Ok((pick(&self.cos)?, pick(&self.sin)?))
    }
}

/// Llama 3's frequency-dependent scaling of one inverse frequency (identity without it).
pub(crate) fn llama3_scaled(inv_freq: f64, cfg: &LlamaConfig) -> f64 {
    let Some(s) = &cfg.rope_scaling else {
        return inv_freq;
    };
    let old = s.original_max_position_embeddings as f64;
    let low_wavelen = old / s.low_freq_factor;
    let high_wavelen = old / s.high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
    if wavelen < high_wavelen {
        inv_freq
    } else if wavelen > low_wavelen {
        inv_freq / s.factor
    } else {
        let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq
    }
}
