//! The seven projections of a decoder layer, by name, and the two blocks they belong to.

/// One of a decoder layer's seven projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// The two blocks of a decoder layer GRASP processes in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Attention,
    Mlp,
}

impl Projection {
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// The HF module's own name: `q_proj`, …, `down_proj`.
    pub fn short_name(self) -> &'static str {
        match self {
            Projection::Q => "q_proj",
            Projection::K => "k_proj",
            Projection::V => "v_proj",
            Projection::O => "o_proj",
            Projection::Gate => "gate_proj",
            Projection::Up => "up_proj",
            Projection::Down => "down_proj",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.short_name() == name || p.short_name().trim_end_matches("_proj") == name)
    }

    pub fn block(self) -> Block {
        match self {
            Projection::Q | Projection::K | Projection::V | Projection::O => Block::Attention,
            Projection::Gate | Projection::Up | Projection::Down => Block::Mlp,
        }
    }

    /// Full HF module name, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn module_name(self, layer: usize) -> String {
        let parent = match self.block() {
            Block::Attention => "self_attn",
            Block::Mlp => "mlp",
        };
        format!("model.layers.{layer}.{parent}.{}", self.short_name())
    }
}
