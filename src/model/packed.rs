//! Packed rows: several sequences that share a beginning in one row of the model's input, for
//! scoring many continuations of one context in one forward pass.

/// Several sequences that share a beginning, in one row: the shared `trunk`, then each
/// sequence's own rest (a branch) in turn. A branch sees the trunk and its own earlier tokens
/// and continues the trunk's positions, so each of its tokens gets the logits it would have
/// at the end of its own sequence, while the trunk is computed once for all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedRow {
    pub ids: Vec<u32>,
    /// Rotary position of each token.
    pub positions: Vec<u32>,
    /// 0 for the trunk, i + 1 for branch i, [`PADDING`] for padding.
    branch: Vec<u32>,
}

/// The branch number of padding tokens: they see the trunk and one another, and nothing
/// else sees them.
const PADDING: u32 = u32::MAX;

impl PackedRow {
    pub fn new(trunk: &[u32], branches: &[&[u32]]) -> Self {
        let mut row = PackedRow {
            ids: trunk.to_vec(),
            positions: (0..trunk.len() as u32).collect(),
            branch: vec![0; trunk.len()],
        };
        for (i, tokens) in branches.iter().enumerate() {
            row.ids.extend_from_slice(tokens);
            row.positions
                .extend((0..tokens.len() as u32).map(|t| trunk.len() as u32 + t));
            row.branch
                .extend(std::iter::repeat_n(i as u32 + 1, tokens.len()));
        }
        row
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Right-pads with token 0 up to `width` tokens.
    pub fn pad_to(&mut self, width: usize) {
        self.ids.resize(width, 0);
        self.positions.resize(width, 0);
        self.branch.resize(width, PADDING);
    }

    /// Whether every token sees all tokens before it (a row without branches): plain causal
    /// attention at positions 0, 1, … gives its logits.
    pub fn is_causal(&self) -> bool {
        self.branch.iter().all(|&b| b == 0 || b == PADDING)
    }

    /// Whether the token at index `query` attends to the token at index `key`.
    pub fn sees(&self, query: usize, key: usize) -> bool {
        key <= query && (self.branch[key] == 0 || self.branch[key] == self.branch[query])
    }
}
