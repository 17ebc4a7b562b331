"""Reference for bench_forward: transformers' own model (sdpa attention, inference mode), same
checkpoint, inputs shape, dtype and thread count. Prints one JSON line like bench_forward."""
import json
import sys
import time

import torch
import transformers

model_dir, dtype, threads, batch, seq, iters = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
torch.set_num_threads(threads)
torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
config = transformers.AutoConfig.from_pretrained(model_dir)
is_lm = config.model_type == "llama"
auto = transformers.AutoModelForCausalLM if is_lm else transformers.AutoModelForImageClassification
model = auto.from_pretrained(model_dir, dtype=torch_dtype).eval()
torch.manual_seed(0)
if is_lm:
    inputs = {"input_ids": torch.randint(0, config.vocab_size, (batch, seq))}
    units = batch * seq
else:
    inputs = {"pixel_values": torch.randn(batch, 3, config.image_size, config.image_size).to(torch_dtype)}
    units = batch
with torch.inference_mode():
    model(**inputs)
    t0 = time.perf_counter()
    for _ in range(iters):
        model(**inputs)
    s = (time.perf_counter() - t0) / iters
print(json.dumps({"impl": "transformers", "dtype": dtype, "threads": threads, "seconds_per_forward": round(s, 4),
                  ("tokens_per_s" if is_lm else "images_per_s"): round(units / s, 2)}))
