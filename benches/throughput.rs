//! Throughput of the pieces GRASP spends its time in, on SmolLM2-135M (scripts/fetch_test_model.sh):
//! forward tokens/s, and forward+backward tokens/s with the singular values of one layer trainable.
//! Run with `cargo bench --bench throughput` (GRASP_SMOLLM2_DIR overrides the model path).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use grasp::grasp::svd::{thin_svd, SvdDtype};
use grasp::io::load::{load_files, resolve};
use grasp::model::linear::Linear;
use grasp::model::llama::Projection;

fn main() -> anyhow::Result<()> {
    // As the grasp binary does, so that the figures are the command line's.
    grasp::runtime::tune_process();
    let dir = std::env::var_os("GRASP_SMOLLM2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m"));
    if !dir.join("config.json").is_file() {
        eprintln!(
            "skipping: {} is absent (run scripts/fetch_test_model.sh)",
            dir.display()
        );
        return Ok(());
    }
    let seq: usize = std::env::var("SEQ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let layer: usize = std::env::var("LAYER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut model = load_files(
        resolve(dir.to_str().unwrap(), "main")?,
        &Device::Cpu,
        Some(DType::F32),
    )?
    .model;
    let ids: Vec<u32> = (0..seq as u32).map(|i| (i * 7919) % 49152).collect();
    let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let embedded = model.embed(&ids)?;
    let input = model.run_layers(&embedded, 0, layer, |_, _| Ok(()))?;

    let reps = 3;
    let t = Instant::now();
    for _ in 0..reps {
        model.forward_from(layer, &input)?;
    }
    let fwd = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "forward from layer {layer}, {seq} tokens: {:.3} s ({:.0} tokens/s)",
        fwd,
        seq as f64 / fwd
    );

    for p in [Projection::Gate, Projection::Up, Projection::Down] {
        let proj = model.layers[layer].projection_mut(p);
        let d = thin_svd(&proj.dense_weight()?, SvdDtype::F32)?;
        *proj = Linear::Svd {
            u: d.u,
            s: Var::from_tensor(&d.s)?,
            vh: d.vh,
            bias: None,
        };
    }
    let mut f_total = 0.0;
    let mut b_total = 0.0;
    for _ in 0..reps {
        let t = Instant::now();
        let loss = model.next_token_loss_from(layer, &input, &ids, 1)?;
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        loss.backward()?;
        b_total += t.elapsed().as_secs_f64();
        f_total += f;
    }
    let (f, b) = (f_total / reps as f64, b_total / reps as f64);
    println!("forward+backward from layer {layer} (S of the MLP trainable): {f:.3} s + {b:.3} s ({:.0} tokens/s)", seq as f64 / (f + b));
    Ok(())
}
