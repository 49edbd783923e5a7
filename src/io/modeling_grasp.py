"""Factorized grasp checkpoints in transformers (written by `grasp compress` beside config.json).

config.json's `grasp.ranks` names each compressed projection and its rank r; the checkpoint
stores it as `<name>.svd_in.weight` (r x in) and `<name>.svd_out.weight` (out x r), plus
`<name>.bias` where the projection has one. `auto_map` points AutoModelForCausalLM here, so

    AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)

builds the family's own model with each of those projections as two thin Linear layers:
the weights stay factorized in memory too.
"""

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaForCausalLM
from transformers.models.mistral.modeling_mistral import MistralForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM


class GraspLinear(nn.Module):
    """y = svd_out(svd_in(x)) + bias: a rank-r projection in two thin matrices."""

    def __init__(self, in_features, out_features, rank, bias, dtype=None, device=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        kwargs = {"dtype": dtype, "device": device}
        self.svd_in = nn.Linear(in_features, rank, bias=False, **kwargs)
        self.svd_out = nn.Linear(rank, out_features, bias=False, **kwargs)
        self.bias = nn.Parameter(torch.zeros(out_features, **kwargs)) if bias else None

    def forward(self, x):
        y = self.svd_out(self.svd_in(x))
        return y if self.bias is None else y + self.bias


def factorize(model, ranks):
    """Replaces each projection named in `ranks` by a GraspLinear of that rank."""
    for name, rank in ranks.items():
        parent_name, child = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        dense = getattr(parent, child)
        weight = dense.weight
        setattr(
            parent,
            child,
            GraspLinear(
                dense.in_features,
                dense.out_features,
                rank,
                dense.bias is not None,
                dtype=weight.dtype,
                device=weight.device,
            ),
        )


def _grasp_ranks(config):
    section = getattr(config, "grasp", None) or {}
    return section.get("ranks", {})


class GraspLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        factorize(self, _grasp_ranks(config))


class GraspMistralForCausalLM(MistralForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        factorize(self, _grasp_ranks(config))


class GraspQwen2ForCausalLM(Qwen2ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        factorize(self, _grasp_ranks(config))
