"""Reference for bench/train_gates.sh: the train_gates step in PyTorch on the transformers model, same
model, data, teacher cache, steps, micro-batch, seq_len and threads. Frozen fp32 weights; hard-concrete
gates on heads (input of each self_attn.o_proj) and FFN channels (input of each mlp.down_proj) applied
by forward pre-hooks; loss = KL(teacher || student) on the cached top-k + tail (as in
tests/unit/distill_loss_reference.py) + lambda1 (C - t) + lambda2 (C - t)^2 on the expected parameter
ratio C; Adam(lr 0.05) on log_alpha. A step reads its samples and teacher rows, runs forward, loss,
backward and the optimizer step (as ours times it). Prints one JSON line: step_s (median after 2
warm-up steps), tokens_per_s, peak_rss_mib. HAWADA_REF_DEBUG=1 also prints each step's KL and expected
cost ratio to stderr (to compare with ours' metrics.jsonl).
    python bench/train_gates_reference.py MODEL_DIR TOKENS_H5 CACHE_DIR STEPS MICRO_BATCH GRAD_ACCUM THREADS
                                          [WARMUP HOLDOUT TARGET SEED]"""
import json
import math
import os
import resource
import statistics
import sys
import time

import h5py
import numpy as np
import torch
import transformers

model_dir, tokens_h5, cache_dir = sys.argv[1:4]
steps, mb, accum, threads = (int(a) for a in sys.argv[4:8])
warmup, holdout, target, seed = (int(sys.argv[8]), int(sys.argv[9]), float(sys.argv[10]), int(sys.argv[11])) \
    if len(sys.argv) > 8 else (steps, 16, 0.5, 0)
BETA, GAMMA, ZETA, LR = 2 / 3, -0.1, 1.1, 0.05
torch.set_num_threads(threads)
torch.manual_seed(seed)

model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
model.requires_grad_(False)
cfg = model.config
layers, heads, ffn, hidden = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size, cfg.hidden_size
head_dim = getattr(cfg, "head_dim", None) or hidden // heads
kv = cfg.num_key_value_heads * head_dim

init = math.log(0.9 / 0.1) + BETA * math.log(-GAMMA / ZETA)
la_heads = torch.full((layers, heads), init, requires_grad=True)
la_ffn = torch.full((layers, ffn), init, requires_grad=True)
opt = torch.optim.Adam([la_heads, la_ffn], lr=LR)
z = {}  # the current gate sample: z["heads"] [layers, heads], z["ffn"] [layers, ffn]


def hook(kind, layer):
    def pre(_module, args):
        x = args[0]
        if kind == "heads":
            return ((x.view(*x.shape[:-1], heads, head_dim) * z["heads"][layer][:, None]).flatten(-2),)
        return (x * z["ffn"][layer],)
    return pre


for i, block in enumerate(model.model.layers):
    block.self_attn.o_proj.register_forward_pre_hook(hook("heads", i))
    block.mlp.down_proj.register_forward_pre_hook(hook("ffn", i))


def hard_concrete(log_alpha):
    u = torch.empty_like(log_alpha).uniform_(1e-6, 1 - 1e-6)
    s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def params(h_l, f_l):  # LLaMA parameter count from per-layer head and FFN counts (differentiable)
    per_layer = hidden * h_l * head_dim * 2 + hidden * 2 * kv + hidden * f_l * 3 + 2 * hidden
    return per_layer.sum() + hidden * cfg.vocab_size * (1 if cfg.tie_word_embeddings else 2) + hidden


def keep(log_alpha):
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


dense = params(torch.full((layers,), float(heads)), torch.full((layers,), float(ffn)))


def topk_kl(student, v, idx, lse, T=1.0):  # tests/unit/distill_loss_reference.py, fp32, mean over tokens
    q = torch.softmax(student, -1)
    q_top = q.gather(-1, idx)
    q_tail = 1.0 - q_top.sum(-1, keepdim=True)
    p_top = torch.exp(v - lse[:, None])
    p_tail = (1.0 - p_top.sum(-1, keepdim=True)).clamp_min(0)
    P, Q = torch.cat([p_top, p_tail], -1), torch.cat([q_top, q_tail], -1)
    if T != 1:
        P = P ** (1 / T) / (P ** (1 / T)).sum(-1, keepdim=True)
        Q = Q ** (1 / T) / (Q ** (1 / T)).sum(-1, keepdim=True)
    terms = torch.where(P > 0, P * (torch.log(P) - torch.log(Q)), torch.zeros_like(P))
    return (terms.sum(-1) * T * T).mean()


ids_all = h5py.File(tokens_h5)["input_ids"]
index = json.load(open(os.path.join(cache_dir, "index.json")))
chunk = index.get("chunk_samples", 64)
files = {c["start"]: h5py.File(os.path.join(cache_dir, c["file"])) for c in index["chunks"]}


def teacher_rows(samples):  # rows of the given samples, in order, from the chunk files
    v, i, l = [], [], []
    for s in samples:
        start = s // chunk * chunk
        f, r = files[start], s - start
        v.append(f["topk_values"][r])
        i.append(f["topk_indices"][r])
        l.append(f["logsumexp"][r])
    v = np.stack(v)
    v = torch.from_numpy(v.view(np.int16)).view(torch.bfloat16).float() if v.dtype == np.uint16 \
        else torch.from_numpy(v).float()
    return v, torch.from_numpy(np.stack(i)).long(), torch.from_numpy(np.stack(l))


order = torch.randperm(ids_all.shape[0] - holdout)
times, tokens, lam1, lam2 = [], 0, 0.0, 0.0
for step in range(steps):
    t0 = time.perf_counter()
    t = target if warmup == 0 else 1 - (1 - target) * min(1.0, (step + 1) / warmup)
    opt.zero_grad()
    tokens = 0
    for a in range(accum):
        pos = [(step * accum + a) * mb + j for j in range(mb)]
        samples = [int(order[p % len(order)]) for p in pos]
        ids = torch.from_numpy(np.stack([ids_all[s] for s in samples])).long()
        v, idx, lse = teacher_rows(samples)
        z["heads"], z["ffn"] = hard_concrete(la_heads), hard_concrete(la_ffn)
        logits = model(input_ids=ids).logits.float()
        k = v.shape[-1]
        kl = topk_kl(logits.view(-1, logits.shape[-1]), v.view(-1, k), idx.view(-1, k), lse.view(-1))
        (kl / accum).backward()
        tokens += ids.numel()
    gap = params(keep(la_heads).sum(1), keep(la_ffn).sum(1)) / dense - t
    (lam1 * gap + lam2 * gap * gap).backward()
    if os.environ.get("HAWADA_REF_DEBUG"):
        print(f"step {step + 1} kl {kl.item():.6f} cost {gap.item() + t:.6f}", file=sys.stderr)
    opt.step()
    lam1 += LR * gap.item()
    lam2 += LR * gap.item() ** 2
    times.append(time.perf_counter() - t0)

step_s = statistics.median(times[2:] if len(times) > 2 else times)
print(json.dumps({"impl": "python-reference", "threads": threads, "steps": steps, "step_s": round(step_s, 4),
                  "tokens_per_s": round(tokens / step_s, 1), "kl_last": round(kl.item(), 4),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
