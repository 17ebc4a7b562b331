"""Our exports as GGUF files in llama.cpp's own tools (issue 36). A bench / test helper (project venv); the
pipeline never calls it. Build the tools first: `bash launch/llama_cpp.sh`.

    python bench/llamacpp.py convert HF_DIR OUT_DIR [--types f16,q8_0,q4_k_m]
    python bench/llamacpp.py greedy HF_DIR GGUF [--tokens 32] [--prompts TEXT ...] [--threads 1]
    python bench/llamacpp.py ppl HF_DIR EVAL_H5 [GGUF ...] [--threads 1] [--windows N]
    python bench/llamacpp.py bench GGUF [GGUF ...] [--threads 2] [--p 256] [--n 64] [--r 3]

convert: llama.cpp's convert_hf_to_gguf.py writes OUT_DIR/NAME-f16.gguf (for Gemma 3 with the per-layer
  attention pattern added, see add_layer_pattern), llama-quantize the other types from it; one JSON line per
  file (type, bytes). K-quants need rows of a multiple of 256: llama-quantize falls back (Q5_0, Q8_0) for
  the others, so SmolLM2's "Q4_K_M" is mostly Q5_0.
greedy: --tokens greedy tokens after each prompt (raw text, the tokenizer's own special tokens, no chat
  template) with transformers (fp32) and with llama-completion (--temp 0); reports the first step where the
  two streams part (compared as text: llama-completion prints pieces, not ids), transformers' top-2 logits
  there, and the smallest top-2 gap on transformers' path, to judge whether a choice was within rounding.
ppl: transformers (fp32) scores EVAL_H5's windows (the first N with --windows) as bench/quality_reference.py
  ppl does (every window as is, every next-token prediction: `ppl_full`) and writes their log-probabilities
  as a llama-perplexity --kl-divergence-base file whose tokens are the windows themselves (no text round
  trip; no BOS put in: tokenizer.ggml.add_bos_token is overridden to false, Gemma's windows already start
  with it). llama-perplexity --kl-divergence then scores each GGUF (an F16 conversion of HF_DIR when none is
  given) on the same windows. It counts only the second half of each window (the predictions from positions
  128..254 of a 256-token window, 127 a window), so `ppl_half` is given for both on exactly those
  predictions, with llama.cpp's mean KL divergence from transformers and how often their top tokens agree.
  (`ppl_half_base_stored` is llama.cpp's reading of the stored log-probabilities, which are clipped at 16
  below the top one: near `ppl_half` unless many targets are that unlikely.)
bench: llama-bench (batch 1): prefill (-p) and decode (-n) tokens/s per GGUF, the mean of -r repetitions,
  and each against the first GGUF given (the dense one).
"""
import argparse
import glob
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from quality_reference import load, windows  # noqa: E402  (the same model loading and windows as its ppl)
sys.path.insert(0, os.path.join(REPO, "runtimes"))
from gguf_layer_pattern import add_layer_pattern  # noqa: E402,F401  (the one copy, shared with export.gguf)

BIN = os.environ.get("LLAMA_CPP_BIN", os.path.join(REPO, ".llama.cpp", "build", "bin"))
PROMPTS = ["The capital of France is",
           "Once upon a time, in a small village by the sea,",
           "To build a C program from several source files, you"]


def tool(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        raise SystemExit(f"llamacpp.py: no {path}; run bash launch/llama_cpp.sh")
    return path


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if p.returncode:
        raise SystemExit(f"llamacpp.py: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def convert_cmd(a):
    converter = glob.glob(os.path.join(REPO, ".llama.cpp", "src", "*", "vendor", "llama.cpp", "convert_hf_to_gguf.py"))
    if not converter:
        raise SystemExit("llamacpp.py: no convert_hf_to_gguf.py; run bash launch/llama_cpp.sh")
    os.makedirs(a.out, exist_ok=True)
    name = os.path.basename(os.path.normpath(a.model))
    f16 = os.path.join(a.out, f"{name}-f16.gguf")
    run([sys.executable, converter[0], a.model, "--outfile", f16, "--outtype", "f16"])
    with open(os.path.join(a.model, "config.json")) as f:
        config = json.load(f)
    if config["model_type"] == "gemma3_text":
        add_layer_pattern(f16, [t == "sliding_attention" for t in config["layer_types"]])
    for t in a.types.split(","):
        path = f16 if t == "f16" else os.path.join(a.out, f"{name}-{t}.gguf")
        if t != "f16":
            run([tool("llama-quantize"), f16, path, t.upper(), str(a.threads)])
        print(json.dumps({"type": t, "file": path, "bytes": os.path.getsize(path)}), flush=True)
    if "f16" not in a.types.split(","):
        os.remove(f16)


def llama_generate(gguf, prompt, tokens, threads):
    p = run([tool("llama-completion"), "-m", gguf, "-p", prompt, "-n", str(tokens), "--temp", "0", "--top-k", "1",
             "-no-cnv", "--no-display-prompt", "--no-warmup", "--verbose-prompt", "-t", str(threads), "-c", "512"])
    text = p.stdout.removesuffix("\n\n")  # what it prints after the generation
    eog = text.endswith(" [end of text]\n")  # what it prints on an end-of-generation token
    text = text.removesuffix(" [end of text]\n")
    section = p.stderr.split("number of tokens in prompt", 1)[1].split("sampler", 1)[0]
    return text, eog, [int(m) for m in re.findall(r"(\d+) -> '", section)]


@torch.no_grad()
def greedy_cmd(a):
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    model = load(a.model)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for prompt in a.prompts:
        x = tok(prompt, return_tensors="pt")
        out = model.generate(**x, max_new_tokens=a.tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=min(eos))
        ids = out.sequences[0, x["input_ids"].shape[1]:].tolist()
        hf_eos = bool(ids) and ids[-1] in eos
        ids = ids[:-1] if hf_eos else ids
        text, eog, llama_prompt = llama_generate(a.gguf, prompt, a.tokens, a.threads)
        dec = lambda n: tok.decode(ids[:n], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        hf_text, step = dec(len(ids)), None
        for i in range(1, len(ids) + 1):
            h = dec(i)
            if h.endswith("\ufffd") or text.startswith(h):  # agrees so far (or a character cut between tokens)
                continue
            if h.startswith(text) and not eog:  # llama's tokens ran out first: no difference seen
                break
            step = i - 1  # transformers' token i-1 is not what llama.cpp printed (or llama.cpp stopped there)
            break
        else:
            if text != hf_text or hf_eos != eog:
                step = len(ids)  # the same text, then one side stopped (EOS / EOG) or went on
        row = {"prompt": prompt, "prompt_tokens_equal": llama_prompt == x["input_ids"][0].tolist(),
               "first_difference": step}
        if step is not None:
            if step < len(out.logits):
                top = torch.topk(out.logits[step][0].float(), 2)
                row["hf_top2"] = [[t, tok.decode([t]), v] for t, v in zip(top.indices.tolist(), top.values.tolist())]
                row["hf_top2_gap"] = row["hf_top2"][0][2] - row["hf_top2"][1][2]
            row["hf_from_there"] = hf_text[len(dec(step)):][:40]
            row["llama_from_there"] = text[len(dec(step)):][:40]
        gaps = [float(lg[0].topk(2).values.diff().neg()) for lg in out.logits]
        row.update(hf_min_top2_gap=min(gaps), hf_min_top2_gap_step=gaps.index(min(gaps)), hf_tokens=len(ids),
                   hf_eos=hf_eos, llama_eog=eog, hf_text=hf_text, llama_text=text)
        print(json.dumps(row), flush=True)


def quantized_log_probs(logits, nv):
    """llama-perplexity's stored form of log-softmax rows (its log_softmax(..., uint16_t *, ...))."""
    mx = logits.max(1, keepdims=True)
    mn = np.maximum(logits.min(1, keepdims=True), mx - 16)
    lse = np.log(np.exp(logits - mx).astype(np.float64).sum(1, keepdims=True)).astype(np.float32)
    scale = ((mx - mn) / 65535.0).astype(np.float32)
    q = np.where(logits > mn, np.rint((logits - mn) / scale), 0).astype(np.uint16)
    head = np.concatenate([scale, (mn - mx - lse).astype(np.float32)], 1).view(np.uint16)
    out = np.zeros((logits.shape[0], nv), np.uint16)
    out[:, :4], out[:, 4:4 + logits.shape[1]] = head, q
    return out


@torch.no_grad()
def ppl_cmd(a):
    ids = windows(a.tokens, 0, a.windows)
    with tempfile.TemporaryDirectory(prefix="llamacpp-ppl-") as tmp:
        score(a, ids, tmp)


def score(a, ids, tmp):
    """ppl with its scratch files (the F16 conversion, the 0.8 GB base file for 64 x 256 tokens) in tmp."""
    import gguf
    n_win, n_ctx = ids.shape
    first = n_ctx // 2
    if not a.ggufs:
        convert_cmd(argparse.Namespace(model=a.model, out=tmp, types="f16", threads=a.threads))
        a.ggufs = glob.glob(os.path.join(tmp, "*-f16.gguf"))
    n_vocab = len(gguf.GGUFReader(a.ggufs[0]).fields["tokenizer.ggml.tokens"].data)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    model = load(a.model)
    base = os.path.join(tmp, "base.kld")
    full, half = 0.0, 0.0
    with open(base, "wb") as f:
        f.write(b"_logits_" + struct.pack("<Iii", n_ctx, n_vocab, n_win) + ids.numpy().astype("<i4").tobytes())
        for i in range(0, n_win, 8):
            x = ids[i:i + 8]
            logits = model(input_ids=x).logits.float()
            assert logits.shape[-1] == n_vocab, (logits.shape, n_vocab)
            lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:, None])[..., 0].double()
            full, half = full - lp.sum().item(), half - lp[:, first:].sum().item()
            for w in logits[:, first:n_ctx - 1].numpy():
                f.write(quantized_log_probs(w, nv).tobytes())
    del model
    hf = {"model": a.model, "windows": n_win, "ppl_full": math.exp(full / (n_win * (n_ctx - 1))),
          "ppl_half": math.exp(half / (n_win * (n_ctx - 1 - first)))}
    print(json.dumps({"runtime": "transformers fp32", **hf}), flush=True)
    for g in a.ggufs:
        p = run([tool("llama-perplexity"), "-m", g, "--kl-divergence-base", base, "--kl-divergence",
                 "-c", str(n_ctx), "-b", str(n_ctx), "-t", str(a.threads),
                 "--override-kv", "tokenizer.ggml.add_bos_token=bool:false"])
        log = p.stdout + p.stderr

        def num(pat):  # from the summary's line
            found = re.findall(pat + r"\s*:\s*([-0-9.]+)", log)
            return float(found[-1]) if found else sys.exit(f"llamacpp.py: no {pat} in\n{log[-3000:]}")
        row = {"runtime": "llama.cpp", "gguf": g, "bytes": os.path.getsize(g), "ppl_half": num(r"Mean PPL\(Q\)"),
               "ppl_half_base_stored": num(r"Mean PPL\(base\)"), "kld": num(r"Mean\s+KLD"),
               "same_top_percent": num(r"Same top p")}
        row["ppl_half_vs_transformers"] = row["ppl_half"] / hf["ppl_half"]
        print(json.dumps(row), flush=True)


def bench_cmd(a):
    cmd = [tool("llama-bench"), "-o", "json", "-t", str(a.threads), "-p", str(a.p), "-n", str(a.n), "-r", str(a.r)]
    for g in a.ggufs:
        cmd += ["-m", g]
    rows = {}
    for r in json.loads(run(cmd).stdout):
        kind = "prefill" if r["n_gen"] == 0 else "decode"
        row = rows.setdefault(r["model_filename"], {"gguf": r["model_filename"], "type": r["model_type"],
                                                    "bytes": r["model_size"], "threads": r["n_threads"]})
        row[kind + "_tokens_per_s"], row[kind + "_sd"] = r["avg_ts"], r["stddev_ts"]
    dense = None
    for row in rows.values():
        dense = dense or row
        for k in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            row[k.replace("tokens_per_s", "speedup")] = row[k] / dense[k]
        print(json.dumps(row), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("model"), c.add_argument("out")
    c.add_argument("--types", default="f16,q8_0,q4_k_m"), c.add_argument("--threads", type=int, default=1)
    g = sub.add_parser("greedy")
    g.add_argument("model"), g.add_argument("gguf")
    g.add_argument("--tokens", type=int, default=32), g.add_argument("--prompts", nargs="+", default=PROMPTS)
    g.add_argument("--threads", type=int, default=1)
    q = sub.add_parser("ppl")
    q.add_argument("model"), q.add_argument("tokens"), q.add_argument("ggufs", nargs="*")
    q.add_argument("--threads", type=int, default=1), q.add_argument("--windows", type=int, default=0)
    b = sub.add_parser("bench")
    b.add_argument("ggufs", nargs="+")
    b.add_argument("--threads", type=int, default=2), b.add_argument("--p", type=int, default=256)
    b.add_argument("--n", type=int, default=64), b.add_argument("--r", type=int, default=3)
    a = p.parse_args()
    {"convert": convert_cmd, "greedy": greedy_cmd, "ppl": ppl_cmd, "bench": bench_cmd}[a.cmd](a)


if __name__ == "__main__":
    main()
