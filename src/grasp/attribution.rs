//! Gradient attribution: dL/dS of every singular value of a block's projections, summed over
//! the calibration batches (each batch contributing the gradient of its mean next-token loss).
//!
//! Layers are compressed highest index first, so the input of layer i is always the unmodified
//! model's hidden state: it is computed once ([`LayerInputs`]) and each gradient pass runs only
//! from layer i to the head. Backward then stops at layer i by itself, since the cached input
//! is a constant to the graph. The result is the same as a full forward and backward pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;

use crate::data::calibration::Calibration;
use crate::model::linear::Linear;
use crate::model::llama::Projection;
use crate::model::Llama;
use crate::runtime;

/// The calibration batches as (batch, seq) id tensors on the model's device, and how far
/// ahead the calibration loss looks for each position's target.
pub struct Batches {
    pub ids: Vec<Tensor>,
    /// Position t is scored against token t + `label_shift` (1: the next-token loss).
    pub label_shift: usize,
}

impl Batches {
    /// The next-token batches of `batch_size` windows of `calib` on `device`.
    pub fn new(calib: &Calibration, batch_size: usize, device: &Device) -> Result<Self> {
        let ids = calib
            .batches(batch_size)
            .map(|b| Calibration::batch_tensor(b, device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            ids,
            label_shift: 1,
        })
    }

    pub fn windows(&self) -> usize {
        self.ids.iter().map(|t| t.dims()[0]).sum()
    }

    /// The leading batches that hold the first `windows` windows, whole batches, at least one
    /// (all of them for 0). Inputs cached for `self` serve them under the same indices.
    pub fn first_windows(&self, windows: usize) -> Batches {
        let mut ids = Vec::new();
        let mut taken = 0;
        for batch in &self.ids {
            if windows > 0 && taken >= windows {
                break;
            }
            taken += batch.dims()[0];
            ids.push(batch.clone());
        }
        Batches {
            ids,
            label_shift: self.label_shift,
        }
    }

    /// The mean calibration loss of batch `batch` from layer `start` on, given that layer's
    /// input.
    pub fn loss_from(
        &self,
        model: &Llama,
        start: usize,
        batch: usize,
        input: &Tensor,
    ) -> Result<Tensor> {
        Ok(model.next_token_loss_from(start, input, &self.ids[batch], self.label_shift)?)
    }
}

/// One decoder layer's input for every calibration batch, in memory or in files.
#[derive(Clone)]
pub enum Inputs {
    Memory(Vec<Tensor>),
    /// `owned`: the files are this value's to delete once its layer is done (not when several
    /// compressions share one set of inputs).
    Disk {
        files: Vec<PathBuf>,
        device: Device,
        owned: bool,
    },
}

impl Inputs {
    /// Deletes the files of owned disk-backed inputs once their layer is done (best effort:
    /// the scratch directory holding them is removed at the end anyway).
    pub fn remove_files(&self) {
        if let Inputs::Disk {
            files, owned: true, ..
        } = self
        {
            for f in files {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    /// The input for batch `batch`.
    pub fn get(&self, batch: usize) -> Result<Tensor> {
        match self {
            Inputs::Memory(v) => v
                .get(batch)
                .cloned()
                .with_context(|| format!("no cached layer input for batch {batch}")),
            Inputs::Disk { files, device, .. } => {
                let file = files
                    .get(batch)
                    .with_context(|| format!("no cached layer input for batch {batch}"))?;
                candle_core::safetensors::load(file, device)
                    .with_context(|| format!("cannot read {}", file.display()))?
                    .remove(INPUT)
                    .with_context(|| format!("{} holds no `{INPUT}` tensor", file.display()))
            }
        }
    }
}

/// The tensor name in a layer-input file.
const INPUT: &str = "input";

/// Keeps the inputs of some decoder layers as a forward pass computes them: in memory, or in
/// files under a directory, written as they come so that they take no memory until a gradient
/// pass reads them back, one batch at a time.
pub struct InputCollector {
    layers: Vec<usize>,
    disk: Option<PathBuf>,
    /// Windows per gradient-pass batch: inputs are kept in batches of this many windows,
    /// whatever the batches of the pass that computes them.
    batch_size: usize,
    kept: BTreeMap<usize, Vec<Tensor>>,
    files: BTreeMap<usize, Vec<PathBuf>>,
}

impl InputCollector {
    pub fn new(layers: &[usize], disk: Option<&Path>, batch_size: usize) -> Self {
        Self {
            layers: layers.to_vec(),
            disk: disk.map(Path::to_path_buf),
            batch_size: batch_size.max(1),
            kept: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }

    /// Keeps `input`, layer `layer`'s input for windows `first_window..` (a whole number of
    /// gradient-pass batches, or the last ones), if that layer is collected.
    pub fn keep(
        &mut self,
        layer: usize,
        first_window: usize,
        input: &Tensor,
    ) -> candle_core::Result<()> {
        if !self.layers.contains(&layer) {
            return Ok(());
        }
        let windows = input.dim(0)?;
        for start in (0..windows).step_by(self.batch_size) {
            let part = input.narrow(0, start, self.batch_size.min(windows - start))?;
            let batch = (first_window + start) / self.batch_size;
            match &self.disk {
                None => self.kept.entry(layer).or_default().push(part),
                Some(dir) => {
                    let file = dir.join(format!("layer{layer}-batch{batch}.safetensors"));
                    part.save_safetensors(INPUT, &file)?;
                    self.files.entry(layer).or_default().push(file);
                }
            }
        }
        Ok(())
    }

    pub fn finish(self, device: &Device) -> LayerInputs {
        let inputs = self
            .kept
            .into_iter()
            .map(|(l, v)| (l, Inputs::Memory(v)))
            .chain(self.files.into_iter().map(|(l, files)| {
                let device = device.clone();
                (
                    l,
                    Inputs::Disk {
                        files,
                        device,
                        owned: true,
                    },
                )
            }))
            .collect();
        LayerInputs { inputs }
    }
}

/// Hidden-state inputs of some decoder layers for every calibration batch.
#[derive(Default)]
pub struct LayerInputs {
    inputs: BTreeMap<usize, Inputs>,
}

impl LayerInputs {
    /// One forward pass of the model as it is now, up to the highest requested layer, keeping
    /// the inputs in memory or in files under `disk`.
    pub fn collect(
        model: &Llama,
        batches: &Batches,
        layers: &[usize],
        disk: Option<&Path>,
    ) -> Result<Self> {
        let batch_size = batches.ids.first().map_or(1, |t| t.dims()[0]);
        let mut collector = InputCollector::new(layers, disk, batch_size);
        if let Some(&top) = layers.iter().max() {
            let mut first = 0;
            for ids in &batches.ids {
                let embedded = model.embed(ids)?;
                collector.keep(0, first, &embedded)?;
                model.run_layers(&embedded, 0, top, |i, out| {
                    collector.keep(i + 1, first, out)
                })?;
                first += ids.dims()[0];
            }
        }
        Ok(collector.finish(model.device()))
    }

    /// Bytes one layer's inputs take: windows × seq × hidden × dtype size.
    pub fn bytes_per_layer(model: &Llama, batches: &Batches) -> usize {
        let tokens: usize = batches.ids.iter().map(|t| t.elem_count()).sum();
        tokens * model.config.hidden_size * model.dtype().size_in_bytes()
    }

    /// Drops the inputs of every layer not in `layers` (and deletes their files).
    pub fn retain(&mut self, layers: &[usize]) {
        self.inputs.retain(|l, inputs| {
            let keep = layers.contains(l);
            if !keep {
                inputs.remove_files();
            }
            keep
        });
    }

    pub fn take(&mut self, layer: usize) -> Option<Inputs> {
        self.inputs.remove(&layer)
    }

    /// Layer `layer`'s inputs for one of several compressions that share them: the files stay
    /// until this collection is dropped with [`LayerInputs::retain`] or its directory.
    pub fn share(&self, layer: usize) -> Option<Inputs> {
        self.inputs.get(&layer).map(|inputs| match inputs {
            Inputs::Disk { files, device, .. } => Inputs::Disk {
                files: files.clone(),
                device: device.clone(),
                owned: false,
            },
            memory => memory.clone(),
        })
    }
}

/// Gradients of one block's singular values.
pub struct BlockGradients {
    /// dL/dS per target projection, in the order given.
    pub grads: Vec<Vec<f64>>,
    /// Mean calibration loss over the batches (with every block processed so far truncated).
    pub loss_mean: f64,
}

/// Accumulates dL/dS over the batches for `targets` of `layer`, which must already be in
/// [`Linear::Svd`] form. `inputs` are layer `layer`'s inputs.
///
/// On the CPU, batches run [`concurrent_passes`] at a time, each pass on one thread: the GEMMs
/// of one pass split over two cores reach about 1.7× one core, two single-threaded passes side
/// by side 2× (SmolLM2, forward+backward from layer 12: 307 tokens/s against 2 × 180). Each
/// batch's gradient is the same whichever thread computes it, and they are summed in batch
/// order, so the result does not depend on the number of passes.
pub fn singular_value_gradients(
    model: &Llama,
    layer: usize,
    targets: &[Projection],
    batches: &Batches,
    inputs: &Inputs,
    progress: &ProgressBar,
) -> Result<BlockGradients> {
    let vars: Vec<_> = targets
        .iter()
        .map(|&p| match model.layers[layer].projection(p) {
            Linear::Svd { s, .. } => Ok(s.clone()),
            _ => bail!("{} is not in SVD form", p.module_name(layer)),
        })
        .collect::<Result<_>>()?;
    let done = Mutex::new((0usize, 0.0f64));
    let batch = |n: usize| -> Result<(Vec<Vec<f64>>, f64)> {
        let ids = &batches.ids[n];
        let loss = batches.loss_from(model, layer, n, &inputs.get(n)?)?;
        let store = loss.backward()?;
        let grads = vars
            .iter()
            .zip(targets)
            .map(|(var, &p)| match store.get(var.as_tensor()) {
                Some(g) => Ok(g.to_dtype(DType::F64)?.to_vec1()?),
                None => bail!(
                    "no gradient reached the singular values of {}",
                    p.module_name(layer)
                ),
            })
            .collect::<Result<Vec<Vec<f64>>>>()?;
        let loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let mut done = done.lock().unwrap_or_else(PoisonError::into_inner);
        *done = (done.0 + 1, done.1 + loss);
        progress.inc(ids.dims()[0] as u64);
        progress.set_message(format!("loss {:.4}", done.1 / done.0 as f64));
        Ok((grads, loss))
    };
    let per_batch = for_each_batch(model, layer, batches, batch)?;
    let mut grads: Vec<Vec<f64>> = vars
        .iter()
        .map(|v| vec![0.0; v.as_tensor().elem_count()])
        .collect();
    let mut loss_sum = 0.0;
    for (batch_grads, loss) in per_batch {
        for (acc, g) in grads.iter_mut().zip(batch_grads) {
            acc.iter_mut().zip(g).for_each(|(a, g)| *a += g);
        }
        loss_sum += loss;
    }
    for (g, &p) in grads.iter().zip(targets) {
        let name = p.module_name(layer);
        if g.iter().any(|x| !x.is_finite()) {
            bail!("the gradient of {name}'s singular values is not finite (NaN or inf)");
        }
        if g.iter().all(|&x| x == 0.0) {
            bail!("the gradient of {name}'s singular values is all zero");
        }
    }
    Ok(BlockGradients {
        grads,
        loss_mean: loss_sum / batches.ids.len().max(1) as f64,
    })
}

/// `job(n)` for every batch n of a pass from `layer`, in batch order: [`concurrent_passes`]
/// at a time, each on one thread, or one after the other on the whole pool.
pub fn for_each_batch<T: Send>(
    model: &Llama,
    layer: usize,
    batches: &Batches,
    job: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    match concurrent_passes(model, layer, batches) {
        1 => (0..batches.ids.len()).map(job).collect(),
        passes => runtime::single_threaded_in_parallel(batches.ids.len(), passes, job),
    }
}

/// How many gradient passes from `layer` run at once: on the CPU, [`runtime::passes_that_fit`] the
/// threads of rayon's pool and the memory the system has available; elsewhere one.
pub fn concurrent_passes(model: &Llama, layer: usize, batches: &Batches) -> usize {
    if !model.device().is_cpu() {
        return 1;
    }
    let Some(first) = batches.ids.first() else {
        return 1;
    };
    runtime::passes_that_fit(
        runtime::num_threads(),
        batches.ids.len(),
        model.gradient_pass_bytes(layer, first.elem_count()),
        runtime::available_memory_bytes(),
    )
}
