"""Reference for bench/teacher_cache.sh: the same work in Python (transformers forward in fp32, torch.topk,
torch.logsumexp, bf16 values, h5py chunk files of 64 samples), same model, data, k, batch and threads.
Prints one JSON line with tokens/s of the compute-and-write loop. An optional fifth argument "bf16" runs the LM
head alone as bf16 products with fp32 accumulation (oneDNN's bf16 mode for fp32 matmuls, what our
model.head_matmul = "auto" does on a CPU with AMX or AVX512-BF16): the same numerics as ours."""
import json
import os
import sys
import time

import h5py
import torch
import transformers

model_dir, data, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
k, batch, chunk = 64, 8, 64
torch.set_num_threads(threads)
model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
head_precision = sys.argv[5] if len(sys.argv) > 5 else "fp32"
if head_precision == "bf16":
    head_forward = model.lm_head.forward

    def bf16_head(x):
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        try:
            return head_forward(x)
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = "none"

    model.lm_head.forward = bf16_head
ids = torch.from_numpy(h5py.File(data)["input_ids"][:]).long()
os.makedirs(out, exist_ok=True)
t0 = time.perf_counter()
with torch.inference_mode():
    for start in range(0, ids.shape[0], chunk):
        vals, idx, lses = [], [], []
        for s in range(start, min(start + chunk, ids.shape[0]), batch):
            logits = model(input_ids=ids[s:s + batch]).logits.float()
            v, i = logits.topk(k, dim=-1)
            vals.append(v.to(torch.bfloat16).view(torch.int16))
            idx.append(i.int())
            lses.append(torch.logsumexp(logits, dim=-1))
        with h5py.File(os.path.join(out, f"chunk-{start}.h5"), "w") as f:
            f["topk_values"] = torch.cat(vals).numpy().view("uint16")
            f["topk_indices"] = torch.cat(idx).numpy()
            f["logsumexp"] = torch.cat(lses).numpy()
seconds = time.perf_counter() - t0
print(json.dumps({"impl": "python-reference", "threads": threads, "head": head_precision, "seconds": round(seconds, 3),
                  "tokens_per_s": round(ids.numel() / seconds, 1)}))
