"""The Python reference of the heal stage (bench/quality.sh): the same training in PyTorch as a user would
write it. A transformers model of the pruned shape (the unhealed export) with fp32 parameters and bf16
autocast, the same top-k + tail KL against the same teacher cache (our HDF5 chunks, read with h5py),
torch.optim.AdamW with the same warm-up + cosine schedule and gradient clipping, micro-batches with
accumulation. Prints steps/s (median step after 2 warm-up steps) and the peak resident memory.

    python bench/heal_reference.py MODEL_DIR CACHE_DIR TOKENS.h5 --steps 20 --micro-batch 4 --grad-accum 2
        [--lr 1e-4] [--holdout 80] [--threads 1] [--dtype bf16|fp32]

The samples are drawn at random from the training samples (the last --holdout are never used): the
work per step is what matters here, not which samples they are.
"""
import argparse
import glob
import json
import math
import os
import resource
import statistics
import time

import h5py
import numpy as np
import torch
import transformers


class Cache:
    """The teacher cache read per micro-batch, as our heal reads it (h5py, one chunk file per 64 samples):
    values fp32, indices int64, lse fp32 of the requested samples. Nothing else is held in memory, so the
    peak memory compares the training, not a preloaded cache."""

    def __init__(self, cache_dir):
        with open(os.path.join(cache_dir, "index.json")) as f:
            index = json.load(f)
        self.where = {}
        for path in sorted(glob.glob(os.path.join(cache_dir, "chunk-*.h5"))):
            with h5py.File(path, "r") as f:
                for row, s in enumerate(f["sample_index"][...]):
                    self.where[int(s)] = (path, row)

    def read(self, samples):
        vals, idx, lse = [], [], []
        for s in samples:
            path, row = self.where[int(s)]
            with h5py.File(path, "r") as f:
                v = f["topk_values"][row]
                if v.dtype == np.uint16:  # bf16 stored as its bits
                    v = (v.astype(np.uint32) << 16).view(np.float32)
                vals.append(torch.from_numpy(v.astype(np.float32)))
                idx.append(torch.from_numpy(f["topk_indices"][row].astype(np.int64)))
                lse.append(torch.from_numpy(f["logsumexp"][row].astype(np.float32)))
        return torch.stack(vals), torch.stack(idx), torch.stack(lse)


def topk_kl(logits, values, indices, lse):
    """KL(teacher || student) over the teacher's top-k plus one tail bucket, mean per token."""
    s = logits.float().reshape(-1, logits.shape[-1])
    v, ix, t_lse = values.reshape(-1, values.shape[-1]), indices.reshape(-1, indices.shape[-1]), lse.reshape(-1)
    t_top = v - t_lse[:, None]
    t_tail = torch.log(torch.clamp_min(1 - t_top.exp().sum(-1, True), 0))
    s_lse = torch.logsumexp(s, -1, True)
    s_top = s.gather(-1, ix) - s_lse
    s_tail = torch.log(torch.clamp_min(1 - s_top.exp().sum(-1, True), 1e-30))
    t = torch.cat([t_top, t_tail], -1)
    st = torch.cat([s_top, s_tail], -1)
    p = t.exp()
    return torch.where(p > 0, p * (t - st), torch.zeros_like(p)).sum(-1).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("cache")
    ap.add_argument("tokens")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--holdout", type=int, default=80)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with h5py.File(a.tokens, "r") as f:
        ids = torch.from_numpy(f["input_ids"][...].astype(np.int64))
    cache = Cache(a.cache)
    train = ids.shape[0] - a.holdout
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    times = []
    for step in range(a.steps):
        t0 = time.perf_counter()
        lr = a.lr * ((step + 1) / a.warmup if step < a.warmup else
                     0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - a.warmup) / max(1, a.steps - a.warmup))))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        for _ in range(a.grad_accum):
            s = torch.randint(0, train, (a.micro_batch,), generator=gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
                logits = model(input_ids=ids[s]).logits
            loss = topk_kl(logits, *cache.read(s.tolist())) / a.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        times.append(time.perf_counter() - t0)
    steady = times[2:] if len(times) > 3 else times
    step_s = statistics.median(steady)
    out = {"implementation": f"transformers {transformers.__version__} + torch {torch.__version__} AdamW, autocast {a.dtype}",
           "steps": a.steps, "micro_batch": a.micro_batch, "grad_accum": a.grad_accum, "threads": a.threads,
           "median_step_s": step_s, "steps_per_s": 1 / step_s,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
