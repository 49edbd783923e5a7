//! What a pass will cost, estimated from the model's shapes: matrix FLOPs (for the rate a
//! report shows) and a gradient pass's memory (for how many passes run at once).

use super::logits::LOGIT_ROWS;
use super::projection::Projection;
use super::Llama;

impl Llama {
    /// Matrix-multiply FLOPs of a forward pass over `tokens` tokens in windows of `seq_len`,
    /// from layer `start` through the LM head: projections, the causal attention scores and
    /// values (a query at position p sees p + 1 keys), and the head.
    pub fn forward_flops(&self, start: usize, tokens: usize, seq_len: usize) -> f64 {
        let q_dim = (self.config.num_attention_heads * self.config.head_dim) as f64;
        let per_token: f64 = self.layers[start..]
            .iter()
            .map(|l| {
                let weights: usize = Projection::ALL
                    .iter()
                    .map(|p| l.projection(*p).num_params())
                    .sum();
                2.0 * weights as f64 + 2.0 * (seq_len + 1) as f64 * q_dim
            })
            .sum::<f64>()
            + 2.0 * (self.config.vocab_size * self.config.hidden_size) as f64;
        per_token * tokens as f64
    }

    /// Bytes a gradient pass from layer `start` over `tokens` tokens holds at its largest, its
    /// graph's saved activations plus the head's block of logits: an estimate, for deciding
    /// how many passes may run at once. Per token and frozen layer the graph keeps the inputs
    /// of both residual blocks, q, k and v, and gate and up. (SmolLM2 at 512 tokens: 10.6 MB a
    /// layer; peak RSS measured 8.4 MB a layer, from layer 0 against from layer 29.)
    pub fn gradient_pass_bytes(&self, start: usize, tokens: usize) -> usize {
        let c = &self.config;
        let q_dim = c.num_attention_heads * c.head_dim;
        let kv_dim = c.num_key_value_heads * c.head_dim;
        let per_token_layer = 2 * c.hidden_size + q_dim + 2 * kv_dim + 2 * c.intermediate_size;
        let layers = self.layers.len().saturating_sub(start);
        let dtype = self.dtype().size_in_bytes().max(4);
        (tokens * (layers * per_token_layer + c.hidden_size) + LOGIT_ROWS * c.vocab_size) * dtype
    }
}
