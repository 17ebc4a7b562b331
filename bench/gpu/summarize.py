"""Summarises one bench/gpu/run.sh output folder: the numbers issue 15 asks for, into summary.json and
summary.md, and a short table on stdout (the last lines a device call returns).

FLOPs, counted per token of a forward pass of the dense model (config.json of the run's model):
  matrix products: 2 x (the layers' q, k, v, o, gate, up, down weights + the LM head's vocab x hidden)
  attention:       2 x 2 x layers x (seq_len / 2) x heads x head_dim   (QK^T and AV, causal half)
A teacher-cache token costs one forward. A gate-training token costs the student's forward plus the
backward to the activations only (the weights are frozen: no weight-gradient products), counted as
2 x matrix products + 3 x attention. MFU = achieved FLOP/s / the GPU's dense bf16 peak (H100/H200 SXM:
989 TFLOP/s; H100 PCIe 756)."""
import argparse
import json
import math
import os
import re
import statistics


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--work", required=True)
p.add_argument("--wall", type=float, default=0)
a = p.parse_args()
out = a.out
log = read(os.path.join(out, "pipeline.log"))
s = {"wall_s": a.wall, "steps": read(os.path.join(out, "steps.txt")).split("\n")}

gpu = read(os.path.join(out, "gpu.csv")).strip().split("\n")
name = gpu[1].split(",")[0].strip() if len(gpu) > 1 else "cpu"
s["device"] = gpu[1] if len(gpu) > 1 else "cpu (dry run)"
peak = 756e12 if "PCIe" in name else 989e12 if ("H100" in name or "H200" in name) else float("nan")
s["peak_flops"] = peak

cfg = json.loads(read(os.path.join(a.work, "model", "config.json")) or "{}")
toml = read(os.path.join(out, "gpu.toml"))
seq = int(re.search(r"seq_len = (\d+)", toml).group(1)) if toml else 0
if cfg:
    h, L, H = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv, hd, f, V = cfg["num_key_value_heads"], cfg.get("head_dim", h // H), cfg["intermediate_size"], cfg["vocab_size"]
    layer = h * H * hd + 2 * h * kv * hd + H * hd * h + 3 * h * f
    matmul = 2 * (L * layer + V * h)
    attention = 2 * 2 * L * (seq / 2) * H * hd
    s["flops_per_token"] = {"forward": matmul + attention, "matmul": matmul, "attention": attention,
                            "train_step": 2 * matmul + 3 * attention}


def mfu(tokens_per_s, per_token):
    return tokens_per_s * per_token / peak if peak == peak else None


m = re.search(r"teacher_cache: rank 0 computed (\d+) samples in ([\d.]+) s \(forward ([\d.]+) s\): ([\d.]+) tokens/s", log)
if m:
    n, wall, fwd = int(m.group(1)), float(m.group(2)), float(m.group(3))
    tokens = n * seq
    s["teacher_cache"] = {"samples": n, "tokens": tokens, "wall_s": wall, "forward_s": fwd,
                          "tokens_per_s": tokens / wall, "forward_tokens_per_s": tokens / fwd}
    if "flops_per_token" in s:
        s["teacher_cache"]["mfu"] = mfu(tokens / wall, s["flops_per_token"]["forward"])
        s["teacher_cache"]["mfu_forward_only"] = mfu(tokens / fwd, s["flops_per_token"]["forward"])

rows = [json.loads(l) for l in read(os.path.join(out, "train-metrics.jsonl")).splitlines() if l.strip()]
if rows:
    steady = rows[2:] if len(rows) > 4 else rows
    step_s = statistics.median(r["step_s"] for r in steady)
    tps = statistics.median(r["tokens_per_s"] for r in steady)
    s["train_gates"] = {"steps": len(rows), "median_step_s": step_s, "tokens_per_s": tps,
                        "phases_s": {k: statistics.median(r[k] for r in steady)
                                     for k in ("data_s", "forward_s", "loss_s", "backward_s", "allreduce_s")},
                        "final_kl": rows[-1]["kl"], "final_expected_cost": rows[-1]["expected_cost"]}
    if "flops_per_token" in s:
        s["train_gates"]["mfu"] = mfu(tps, s["flops_per_token"]["train_step"])

m = re.search(r"export: .*?(\d+) MB in (\d+) shard\(s\), ([\d.]+) GB/s", log)
if m:
    s["export"] = {"mb": int(m.group(1)), "shards": int(m.group(2)), "gb_per_s": float(m.group(3))}
summary = read(os.path.join(out, "export-summary.json"))
if summary:
    s.setdefault("export", {})["verify"] = json.loads(summary).get("verify")
s["stages"] = {}
for m in re.finditer(r"(\w+): done in ([\d.]+) s \(peak memory: host RSS ([\d.]+) GiB on the largest rank, "
                     r"[\d.]+ GiB on all \d+; device ([\d.]+) GiB on the largest\)", log):
    s["stages"][m.group(1)] = {"seconds": float(m.group(2)), "peak_device_gib": float(m.group(4)),
                               "peak_host_rss_gib": float(m.group(3))}
mem = [int(x) for x in read(os.path.join(out, "gpu-memory.csv")).split() if x.strip().isdigit()]
if mem:
    s["nvidia_smi_peak_used_mib"] = max(mem)
hf = read(os.path.join(out, "hf-forward.json"))
if hf:
    s["hf_forward"] = json.loads(hf)
    if "teacher_cache" in s:
        s["teacher_vs_transformers"] = s["teacher_cache"]["forward_tokens_per_s"] / s["hf_forward"]["tokens_per_s"]

with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(s, f, indent=1)


def fmt(v, spec):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


lines = [f"device: {s['device']}", f"wall: {a.wall:.0f} s"]
tc, tg, ex = s.get("teacher_cache", {}), s.get("train_gates", {}), s.get("export", {})
lines.append(f"teacher_cache: {fmt(tc.get('tokens_per_s'), '.0f')} tokens/s (forward only {fmt(tc.get('forward_tokens_per_s'), '.0f')}), "
             f"MFU {fmt(tc.get('mfu'), '.3f')} (forward only {fmt(tc.get('mfu_forward_only'), '.3f')})")
if "hf_forward" in s:
    lines.append(f"transformers forward + top-k/lse: {s['hf_forward']['tokens_per_s']:.0f} tokens/s; ours/theirs "
                 f"{fmt(s.get('teacher_vs_transformers'), '.2f')}")
lines.append(f"train_gates: {fmt(tg.get('median_step_s'), '.3f')} s/step, {fmt(tg.get('tokens_per_s'), '.0f')} tokens/s, "
             f"MFU {fmt(tg.get('mfu'), '.3f')}; phases {tg.get('phases_s')}")
lines.append(f"export: {fmt(ex.get('gb_per_s'), '.3f')} GB/s, verify {ex.get('verify', {}).get('passed') if ex.get('verify') else 'n/a'}")
for k, v in s["stages"].items():
    lines.append(f"  {k}: {v['seconds']:.1f} s, peak device {v['peak_device_gib']:.2f} GiB, host RSS {v['peak_host_rss_gib']:.2f} GiB")
if "nvidia_smi_peak_used_mib" in s:
    lines.append(f"nvidia-smi peak memory used: {s['nvidia_smi_peak_used_mib']} MiB")
lines += [x for x in s["steps"] if x]
text = "\n".join(lines)
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(text + "\n")
print("\n== summary\n" + text)
