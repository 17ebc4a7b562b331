"""The reference for the teacher forward on a GPU: transformers' LlamaForCausalLM forward of the same
checkpoint, bf16, on the same device and batch, followed by what the teacher cache takes of the logits
(top-k and log-sum-exp in fp32). Prints and writes tokens/s (median of timed repeats after a warm-up)."""
import argparse
import json
import time

import torch
import transformers

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq-len", type=int, default=2048)
p.add_argument("--top-k", type=int, default=64)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--device", default="cuda")
p.add_argument("--out", required=True)
a = p.parse_args()

dev = torch.device(a.device)
dtype = torch.bfloat16
model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).to(dev).eval()
vocab = model.config.vocab_size
ids = torch.randint(0, vocab, (a.batch, a.seq_len), device=dev)


def step():
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        # As the cache does: a piece of tokens at a time in fp32.
        flat = logits.view(-1, vocab)
        for i in range(0, flat.shape[0], 512):
            piece = flat[i:i + 512].float()
            torch.logsumexp(piece, -1)
            piece.topk(a.top_k, -1)
    if dev.type == "cuda":
        torch.cuda.synchronize()


step()
times = []
for _ in range(a.repeats):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
times.sort()
median = times[len(times) // 2]
result = {"implementation": f"transformers {transformers.__version__}, torch {torch.__version__}",
          "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
          "batch": a.batch, "seq_len": a.seq_len, "seconds": median,
          "tokens_per_s": a.batch * a.seq_len / median,
          "peak_memory_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0}
print(json.dumps(result))
with open(a.out, "w") as f:
    json.dump(result, f, indent=1)
