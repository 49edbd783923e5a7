//! How a compression's report reads on the terminal: a log line per block and per guard
//! decision, and the summary table printed at the end.

use std::path::Path;

use super::common::Log;
use crate::pipeline::report::CompressReport;

/// A line per compressed block (times, calibration loss), one per guard decision after its
/// layer's last block, and with --verbose one per module.
pub fn log_blocks(log: &mut Log, report: &CompressReport) {
    for (i, b) in report.blocks.iter().enumerate() {
        let loss = b
            .calib_loss_mean
            .map(|l| format!(", calibration loss {l:.4}"))
            .unwrap_or_default();
        let rate = if b.gradient_seconds > 0.0 {
            format!(" ({:.1} GFLOP/s)", b.gradient_gflop / b.gradient_seconds)
        } else {
            String::new()
        };
        log.info(format!(
            "layer {:>3} {:<9} svd {:.1}s, gradients {:.1}s{rate}{loss}",
            b.layer, b.block, b.svd_seconds, b.gradient_seconds
        ));
        let last_of_layer = report.blocks.get(i + 1).is_none_or(|n| n.layer != b.layer);
        let guard = report.guard.iter().find(|d| d.layer == b.layer);
        if let (true, Some(d)) = (last_of_layer, guard) {
            log.info(format!(
                "layer {:>3} guard     calibration loss {:.4} compressed, {:.4} removed: {} \
                 ({} windows, {:.1}s)",
                d.layer,
                d.compressed_loss,
                d.removed_loss,
                if d.removed { "removed" } else { "kept" },
                d.windows,
                d.seconds
            ));
        }
    }
    for m in &report.modules {
        log.detail(format!(
            "  {} {}x{} rank {} -> {} (importance kept {:.3})",
            m.name, m.out_features, m.in_features, m.full_rank, m.k, m.retained_importance_fraction
        ));
    }
}

/// The ranks kept per block, the layers, the parameter counts and the times.
pub fn print_summary(r: &CompressReport, out: &Path) {
    println!("{:>6}  {:<10} {:>24}", "layer", "block", "ranks kept");
    for b in &r.blocks {
        let ranks: Vec<String> = r
            .modules
            .iter()
            .filter(|m| b.modules.contains(&m.name))
            .map(|m| {
                format!(
                    "{}:{}/{}",
                    m.name.rsplit('.').next().unwrap_or(""),
                    m.k,
                    m.full_rank
                )
            })
            .collect();
        println!("{:>6}  {:<10} {}", b.layer, b.block, ranks.join(" "));
    }
    println!("layers {:?}", r.chosen_layers);
    if !r.guard.is_empty() {
        println!(
            "removed by the guard (removal gave the lower calibration loss): {:?}",
            r.removed_layers
        );
    }
    let before = r.params_before;
    let fewer = |after: usize| 100.0 * (before - after.min(before)) as f64 / before as f64;
    let mb = |n: usize| n as f64 / 1e6;
    let (factorized, merged) = (
        ("factorized", r.params_after),
        ("merged", r.params_after_merged),
    );
    let (written, other) = match r.output_form {
        crate::io::save::OutputForm::Merged => (merged, factorized),
        crate::io::save::OutputForm::Factorized => (factorized, merged),
    };
    println!(
        "parameters {:.2}M -> {:.2}M {} ({:.1}% fewer; {:.2}M {}, {:.1}% fewer)",
        mb(before),
        mb(written.1),
        written.0,
        fewer(written.1),
        mb(other.1),
        other.0,
        fewer(other.1)
    );
    let t = &r.timings_s;
    println!(
        "time: load {:.1}s, calibration {:.1}s, block influence {:.1}s, compress {:.1}s, recovery {:.1}s, save {:.1}s, total {:.1}s",
        t.load_s, t.calibration_s, t.block_influence_s, t.compress_s, t.recovery_s, t.save_s, t.total_s
    );
    println!("output {}", out.display());
}
