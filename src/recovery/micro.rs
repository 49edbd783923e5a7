//! How a step's examples are cut into micro-batches, and how many of those run at once.

use super::trainable::Trainable;
use crate::data::alpaca::Example;
use crate::model::Llama;
use crate::runtime;

/// How many micro-batches of `tokens` each run side by side, one thread each: as the
/// calibration passes of a compression, on the CPU, one per thread while they fit in half the
/// free memory, since on a few cores single-threaded passes side by side do more than one pass
/// over all the threads. When there are fewer of them than threads, one pass takes all the
/// threads instead of leaving cores idle.
pub(super) fn passes_at_once(model: &Llama, trainable: &Trainable, tokens: &[usize]) -> usize {
    let (Some(&largest), true) = (tokens.iter().max(), model.device().is_cpu()) else {
        return 1;
    };
    let threads = runtime::num_threads();
    let lowest = trainable.layers.iter().copied().min().unwrap_or(0);
    let gradients = trainable.num_params() * 4;
    let passes = runtime::passes_that_fit(
        threads,
        tokens.len(),
        model.gradient_pass_bytes(lowest, largest) + gradients,
        runtime::available_memory_bytes(),
    );
    if passes < threads {
        1
    } else {
        passes
    }
}

/// `batch` cut into ⌈len / size⌉ micro-batches of at most `size` examples and as equal a
/// number of tokens as the greedy rule gives (longest example first, each into the micro-batch
/// with the fewest tokens that has room). The step's gradient is the same however the
/// examples are grouped, and packed micro-batches cost their tokens: equal ones make the
/// largest graph, and so the peak memory, smallest, and passes side by side end together.
pub(super) fn balanced_micro_batches<'a>(
    batch: &[&'a Example],
    size: usize,
) -> Vec<Vec<&'a Example>> {
    let size = size.max(1);
    let mut order = batch.to_vec();
    order.sort_by_key(|e| std::cmp::Reverse(e.ids.len()));
    let mut micros: Vec<(usize, Vec<&Example>)> = vec![(0, Vec::new()); batch.len().div_ceil(size)];
    for e in order {
        let open = micros
            .iter_mut()
            .filter(|(_, m)| m.len() < size)
            .min_by_key(|(tokens, _)| *tokens);
        if let Some((tokens, m)) = open {
            *tokens += e.ids.len();
            m.push(e);
        }
    }
    micros.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example once, at most `size` to a micro-batch, and token totals within one
    /// example's length of each other where the greedy rule can reach it.
    #[test]
    fn micro_batches_hold_every_example_with_balanced_tokens() {
        let lens = [
            250, 30, 41, 180, 77, 12, 90, 64, 150, 8, 33, 120, 57, 201, 19, 99,
        ];
        let examples: Vec<Example> = lens
            .iter()
            .map(|&n| Example {
                ids: vec![0; n],
                scored: vec![true; n - 1],
            })
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        for size in [1, 3, 4, 16] {
            let micros = balanced_micro_batches(&refs, size);
            assert_eq!(micros.len(), lens.len().div_ceil(size));
            assert!(micros.iter().all(|m| !m.is_empty() && m.len() <= size));
            let mut seen: Vec<usize> = micros.iter().flatten().map(|e| e.ids.len()).collect();
            seen.sort_unstable();
            let mut want = lens.to_vec();
            want.sort_unstable();
            assert_eq!(seen, want, "size {size}");
        }
        let totals: Vec<usize> = balanced_micro_batches(&refs, 4)
            .iter()
            .map(|m| m.iter().map(|e| e.ids.len()).sum())
            .collect();
        let (lo, hi) = (totals.iter().min().unwrap(), totals.iter().max().unwrap());
        assert!(hi - lo <= 60, "token totals {totals:?}");
    }
}
