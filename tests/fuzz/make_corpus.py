"""Regenerates the fuzz seed corpus (committed under tests/fuzz/corpus/) with Python's safetensors."""
import json
import os

import torch
from safetensors.torch import save

here = os.path.dirname(os.path.abspath(__file__))
header_dir = os.path.join(here, "corpus", "header")
index_dir = os.path.join(here, "corpus", "index")
os.makedirs(header_dir, exist_ok=True)
os.makedirs(index_dir, exist_ok=True)

seeds = {
    "empty": {},
    "one_f32": {"w": torch.arange(4, dtype=torch.float32)},
    "mixed": {"a": torch.ones(2, 3, dtype=torch.bfloat16), "b": torch.zeros(5, dtype=torch.uint8),
              "c": torch.arange(3, dtype=torch.int64), "d": torch.tensor(True)},
    "zero_size": {"e": torch.empty(0, 4, dtype=torch.float16), "f": torch.ones(1, dtype=torch.float64)},
    "fp8": {"g": torch.zeros(4, dtype=torch.float8_e4m3fn), "h": torch.zeros(2, dtype=torch.float8_e5m2)},
}
for name, tensors in seeds.items():
    meta = {"format": "pt"} if name != "mixed" else {"format": "pt", "note": "x"}
    data = save(tensors, metadata=meta)
    with open(os.path.join(header_dir, name + ".safetensors"), "wb") as f:
        f.write(data)
    if name == "mixed":  # a truncated twin
        with open(os.path.join(header_dir, name + "_truncated.safetensors"), "wb") as f:
            f.write(data[:-3])

indexes = {
    "sharded": {"metadata": {"total_size": 1234}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.layers.0.mlp.up_proj.weight": "model-00002-of-00002.safetensors"}},
    "no_metadata": {"weight_map": {"w": "model.safetensors"}},
    "escape": {"weight_map": {"w": "../model.safetensors"}},
}
for name, obj in indexes.items():
    with open(os.path.join(index_dir, name + ".json"), "w") as f:
        json.dump(obj, f, indent=2)
