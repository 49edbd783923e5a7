//! Few-shot prefixes drawn as lm-eval's sampler draws them.

use anyhow::{ensure, Result};

use super::{Doc, PyRandom};

/// lm-eval's `fewshot_delimiter`: what separates few-shot examples from each other and the doc.
const FEWSHOT_DELIMITER: &str = "\n\n";
/// lm-eval's default `fewshot_random_seed`.
pub const FEWSHOT_SEED: u32 = 1234;

/// The few-shot prefix of each of the first `n_docs` eval docs: `k` examples drawn from `pool`
/// with lm-eval's sampler (`random.Random(1234).sample`, one shared generator in doc order),
/// each written as `context + " " + gold`, joined and ended by a blank line.
pub fn fewshot_prefixes(pool: &[Doc], k: usize, n_docs: usize) -> Result<Vec<String>> {
    if k == 0 {
        return Ok(vec![String::new(); n_docs]);
    }
    ensure!(
        k <= pool.len(),
        "--num-fewshot {k} is larger than the training split ({} docs)",
        pool.len()
    );
    let mut rng = PyRandom::new(FEWSHOT_SEED);
    Ok((0..n_docs)
        .map(|_| {
            let examples: Vec<String> = rng
                .sample_indices(pool.len(), k)
                .into_iter()
                .map(|i| pool[i].labeled_example())
                .collect();
            format!("{}{FEWSHOT_DELIMITER}", examples.join(FEWSHOT_DELIMITER))
        })
        .collect())
}
