"""The recovery training of `grasp finetune`, written in PyTorch, for speed comparison.

Same model (transformers, trust_remote_code for factorized checkpoints), same trainable set
(every parameter of the given layers), same Alpaca template and response-only loss, same
micro-batches, accumulation, gradient clipping to norm 1, AdamW and linear schedule; float32 on
the CPU. Prints one JSON
line: tokens/s over the training steps (padding excluded), peak RSS, the loss per step.

usage: finetune_torch.py MODEL_DIR DATA.jsonl LAYERS(comma) STEPS [BATCH MICRO MAX_LEN]
"""

import json
import os
import random
import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

model_dir, data_path, layers, steps = sys.argv[1:5]
batch, micro, max_len = (int(x) for x in (sys.argv[5:8] + ["32", "4", "256"][len(sys.argv[5:8]):]))
layers = [int(x) for x in layers.split(",")]
steps = int(steps)
torch.manual_seed(0)
torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(
    model_dir, trust_remote_code=True, torch_dtype=torch.float32
)
model.train()
for p in model.parameters():
    p.requires_grad_(False)
for i in layers:
    for p in model.model.layers[i].parameters():
        p.requires_grad_(True)
params = [p for p in model.parameters() if p.requires_grad]


def example(r):
    prompt = (PROMPT_INPUT if r.get("input") else PROMPT_NO_INPUT).format(**r)
    ids = tok(prompt + r["output"], truncation=True, max_length=max_len)["input_ids"]
    n_prompt = len(tok(prompt, truncation=True, max_length=max_len)["input_ids"])
    labels = [-100] * n_prompt + ids[n_prompt:]
    return ids, labels[: len(ids)]


with open(data_path) as f:
    records = [json.loads(line) for line in f if line.strip()]
examples = [e for e in map(example, records) if any(l != -100 for l in e[1][1:])]
random.Random(42).shuffle(examples)
examples = examples[: steps * batch]

opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
sched = get_linear_schedule_with_warmup(opt, min(100, steps // 10), steps)
pad = tok.pad_token_id if tok.pad_token_id is not None else 0
losses, tokens = [], 0
start = time.perf_counter()
for step in range(steps):
    chunk = examples[step * batch : (step + 1) * batch]
    scored = sum(sum(1 for l in labels[1:] if l != -100) for _, labels in chunk)
    total = 0.0
    for m in range(0, len(chunk), micro):
        rows = chunk[m : m + micro]
        t = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([ids + [pad] * (t - len(ids)) for ids, _ in rows])
        labels = torch.tensor([lab + [-100] * (t - len(lab)) for _, lab in rows])
        mask = torch.tensor([[1] * len(i) + [0] * (t - len(i)) for i, _ in rows])
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
            reduction="sum",
        ) / scored
        loss.backward()
        total += loss.item()
        tokens += sum(len(i) for i, _ in rows)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    losses.append(total)
seconds = time.perf_counter() - start
print(
    json.dumps(
        {
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "trainable_params": sum(p.numel() for p in params),
            "losses": losses,
            "threads": torch.get_num_threads(),
        }
    )
)
