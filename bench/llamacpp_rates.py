"""The decode budget's rates for llama.cpp on this machine (issue 36): what `budget.device_bandwidth` and
`budget.layer_overhead_s` must be for the cost model's decode latency (latency_mode = "decode") to describe
llama.cpp rather than transformers. A bench helper (project venv); the pipeline never calls it.

    python bench/llamacpp_rates.py MODEL_DIR [--type q8_0] [--threads 2] [--out DIR]

Models of several shapes cut from MODEL_DIR's config (random weights: llama.cpp's speed does not depend on the
values), converted and quantized by llama.cpp's own tools (bench/llamacpp.py convert), timed in one llama-bench
run (batch 1, -n 64 decode, -p 256 prefill, 3 repetitions). Decode time per token is fitted as
a x parameters + b x blocks + c (least squares); in the cost model's 2-byte units device_bandwidth = 2 / a and
layer_overhead_s = b (device_flops high: llama.cpp's decode is paced by the weights it reads). One JSON line per
shape (measured and fitted), then the keys. Run it alone on the machine.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import llamacpp  # noqa: E402

# (blocks, query heads, kv heads, FFN) as fractions of the dense shape's; heads keep whole kv groups.
SHAPES = [(1.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 5 / 12), (1.0, 2 / 3, 1.0, 1 / 6), (0.4, 1.0, 1.0, 7 / 12),
          (0.5, 1.0, 1.0, 0.5), (0.2, 1.0, 1.0, 1.0)]


def shape_model(dense_dir, out, frac):
    cfg = transformers.AutoConfig.from_pretrained(dense_dir)
    dense_head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    lf, hf, kf, ff = frac
    cfg.num_hidden_layers = max(1, round(cfg.num_hidden_layers * lf))
    cfg.num_key_value_heads = max(1, round(cfg.num_key_value_heads * kf))
    cfg.num_attention_heads = max(cfg.num_key_value_heads, round(cfg.num_attention_heads * hf))
    cfg.num_attention_heads -= cfg.num_attention_heads % cfg.num_key_value_heads
    cfg.head_dim = getattr(cfg, "head_dim", None) or dense_head_dim  # the dense head size: heads are cut whole
    cfg.intermediate_size = max(32, round(cfg.intermediate_size * ff / 32) * 32)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"):
        if os.path.exists(os.path.join(dense_dir, f)):
            shutil.copy(os.path.join(dense_dir, f), out)
    return cfg, model.num_parameters()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model"), p.add_argument("--type", default="q8_0"), p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="")
    a = p.parse_args()
    tmp = a.out or tempfile.mkdtemp(prefix="llamacpp-rates-")
    rows, files = [], []
    for i, frac in enumerate(SHAPES):
        d = os.path.join(tmp, f"shape{i}")
        cfg, params = shape_model(a.model, d, frac)
        llamacpp.convert_cmd(argparse.Namespace(model=d, out=d + "-gguf", types=a.type, threads=a.threads))
        files.append(os.path.join(d + "-gguf", f"shape{i}-{a.type}.gguf"))
        rows.append({"layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
                     "ffn": cfg.intermediate_size, "parameters": params})
    cmd = [llamacpp.tool("llama-bench"), "-o", "json", "-t", str(a.threads), "-p", "256", "-n", "64", "-r", "3"]
    for f in files:
        cmd += ["-m", f]
    speed = {}
    for r in json.loads(llamacpp.run(cmd).stdout):
        speed.setdefault(r["model_filename"], {})["decode" if r["n_gen"] else "prefill"] = r["avg_ts"]
    for row, f in zip(rows, files):
        row.update(decode_tokens_per_s=speed[f]["decode"], prefill_tokens_per_s=speed[f]["prefill"],
                   decode_ms=1e3 / speed[f]["decode"])
    X = np.array([[r["parameters"], r["layers"], 1.0] for r in rows])
    y = np.array([r["decode_ms"] / 1e3 for r in rows])
    (a_s, b_s, c_s), *_ = np.linalg.lstsq(X, y, rcond=None)
    for r, fit in zip(rows, X @ np.array([a_s, b_s, c_s])):
        r.update(fitted_ms=fit * 1e3, speedup=rows[0]["decode_ms"] / r["decode_ms"])
        print(json.dumps(r), flush=True)
    print(json.dumps({"type": a.type, "threads": a.threads, "seconds_per_parameter": a_s, "layer_overhead_s": b_s,
                      "constant_s": c_s, "budget": {"device_bandwidth": 2 / a_s, "layer_overhead_s": max(b_s, 0.0),
                                                    "device_flops": 1e13}}), flush=True)
    if not a.out:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
