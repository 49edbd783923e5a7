//! Recovery training right after a compression (`compress --recovery`, the paper's GRASP*).

use super::report::CompressReport;
use crate::grasp::compress::Method;
use crate::io::save::OutputForm;
use crate::model::Llama;
use crate::recovery::train::TrainReport;
use crate::recovery::trainable::{compressed_layers, layers_beside_removed};

/// The layers recovery trains after a compression that deleted `removed` (numbered as before
/// the compression: the chosen layers of `--method remove`, those the hybrid guard removed):
/// every layer left factorized, and the layer below each removed run.
pub fn recovery_layers(model: &Llama, removed: &[usize]) -> Vec<usize> {
    let mut layers = compressed_layers(model);
    layers.extend(layers_beside_removed(removed));
    layers.sort_unstable();
    layers.dedup();
    layers
}

/// The layers a compression by `method` of `chosen` deleted, given those its guard removed.
pub fn removed_by(method: Method, chosen: &[usize], guard_removed: &[usize]) -> Vec<usize> {
    match method {
        Method::Remove => chosen.to_vec(),
        _ => guard_removed.to_vec(),
    }
}

impl CompressReport {
    /// Records a recovery run: its report and time, and the parameter counts again (adapters
    /// merged into factorized projections add to their rank).
    pub fn recovered(&mut self, model: &Llama, recovery: TrainReport, seconds: f64) {
        self.params_after = model.num_params();
        self.params_after_factorized = self.params_after;
        self.params_after_merged = model.num_params_merged();
        self.params_in_output = match self.output_form {
            OutputForm::Merged => self.params_after_merged,
            OutputForm::Factorized => self.params_after,
        };
        self.recovery = Some(recovery);
        self.timings_s.recovery_s = seconds;
    }
}
