"""Reference for bench_checkpoint_open: Python safetensors (safe_open + get_tensor for every weight,
the way transformers loads), same directory, same JSON line."""
import json
import os
import resource
import sys
import time

from safetensors import safe_open


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return -1.0


model_dir = sys.argv[1]
index = os.path.join(model_dir, "model.safetensors.index.json")
files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
rss0 = rss_mib()
t0 = time.perf_counter()
tensors, nbytes = [], 0
for name in files:
    with safe_open(os.path.join(model_dir, name), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            tensors.append(t)
            nbytes += t.numel() * t.element_size()
seconds = time.perf_counter() - t0
print(json.dumps({"impl": "python-safetensors", "tensors": len(tensors), "bytes": nbytes, "seconds": round(seconds, 6),
                  "rss_growth_mib": round(rss_mib() - rss0, 1)}))
