"""The independent side of bench/quality.sh and the real-model tests: transformers as the reference.

    python bench/quality_reference.py ppl MODEL_DIR TOKENS.h5 [--samples N] [--first I]
    python bench/quality_reference.py baseline {activation,magnitude} DENSE_DIR SHAPE_FROM_DIR CALIB.h5 OUT_DIR
    python bench/quality_reference.py generate MODEL_DIR [--prompt TEXT]
    python bench/quality_reference.py speed DENSE_DIR [MODEL_DIR ...] [--prompt 256] [--new 64] [--threads 2]
    python bench/quality_reference.py kl TEACHER_DIR MODEL_DIR TOKENS.h5 [--samples N]
    python bench/quality_reference.py refit DENSE_DIR MODEL_DIR CALIB.h5 OUT_DIR [--calib-windows 256]

ppl: held-out NLL / perplexity of a model on token windows (every next-token prediction inside each
window), in fp32.

baseline: the one-shot baselines at the shape of SHAPE_FROM_DIR's config.json (ours), written as a
Hugging Face directory:
  activation (Minitron's width criterion, no training): over the first 32 windows of CALIB.h5, the mean
    |act(gate_proj x) * up_proj x| of each FFN channel and the mean L2 norm of each attention head's
    output (before o_proj); each layer keeps its top channels and, in every kept kv group, its top
    query heads (kv groups ranked by the sum of their heads' scores when groups are pruned).
  magnitude: the same selection from weight norms: FFN channel c scores ||down_proj[:, c]|| x
    ||up_proj[c]|| x ||gate_proj[c]||, head h scores ||o_proj[:, head h columns]||.
Hidden channels (when the shape prunes them) are ranked by the mean |x| of the normalised block
inputs (activation) or by the embedding column norm (magnitude). A shape with fewer layers
(num_hidden_layers) drops blocks first: activation by ShortGPT's block influence (the blocks whose
output is most like their input, mean 1 - cos over the calibration tokens, go), magnitude by the last
blocks; then widths are chosen within the kept blocks.

refit: what calibrate.reconstruct does, in transformers, for any pruned model of the same hidden size (a
baseline's, for the baseline + refit row): first layer to last, o_proj and then down_proj are solved by
ridge least squares (1e-4 x the mean diagonal) so that the kept heads' / channels' activations reproduce the
dense projection of all of them on the pruned model's own inputs, over the first --calib-windows windows; a
projection that kept every input is left as it is (as calibrate.reconstruct leaves it).

kl: the mean over every position of the full-vocabulary KL(teacher || model), in fp32 (and the
model's perplexity on the same windows).

speed: what a user feels in transformers, batch 1, fp32, greedy, KV cache: the prefill latency of a
PROMPT-token prompt and the decode speed of NEW tokens after it (median of --repeats), each model
against the first (dense) measured in the same run, on --threads threads.
"""
import argparse
import json
import math
import os
import shutil

import h5py
import numpy as np
import torch
import transformers


def load(path, dtype=torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def windows(path, first=0, count=0):
    with h5py.File(path, "r") as f:
        ids = f["input_ids"][...]
    ids = ids[first:]
    if count:
        ids = ids[:count]
    return torch.from_numpy(ids.astype(np.int64))


@torch.no_grad()
def nll(model, ids, batch=8):
    total, n = 0.0, 0
    for i in range(0, ids.shape[0], batch):
        x = ids[i:i + batch]
        logits = model(input_ids=x).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1)
        total += -lp.gather(-1, x[:, 1:, None]).sum().item()
        n += x[:, 1:].numel()
    return total / n


def ppl_cmd(a):
    model = load(a.model)
    ids = windows(a.tokens, a.first, a.samples)
    v = nll(model, ids)
    print(json.dumps({"model": a.model, "tokens": a.tokens, "windows": ids.shape[0], "nll": v, "ppl": math.exp(v)}))


@torch.no_grad()
def activation_scores(model, ids):
    cfg = model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    ffn = torch.zeros(L, cfg.intermediate_size)
    heads = torch.zeros(L, H)
    hidden = torch.zeros(cfg.hidden_size)
    count = [0]
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def ffn_hook(mod, inp, i=i):
            x = inp[0].float()
            ffn[i] += x.abs().reshape(-1, x.shape[-1]).sum(0)

        def head_hook(mod, inp, i=i):
            x = inp[0].float().reshape(-1, H, hd)
            heads[i] += x.norm(dim=-1).sum(0)

        def norm_hook(mod, inp, out):
            hidden.add_(out.float().abs().reshape(-1, out.shape[-1]).sum(0))

        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(ffn_hook))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(head_hook))
        hooks.append(layer.input_layernorm.register_forward_hook(norm_hook))
        # The MLP's input norm (Gemma's post_attention_layernorm normalises the attention output instead).
        hooks.append(getattr(layer, "pre_feedforward_layernorm", layer.post_attention_layernorm)
                     .register_forward_hook(norm_hook))
    for i in range(0, ids.shape[0], 8):
        model(input_ids=ids[i:i + 8])
    for h in hooks:
        h.remove()
    return heads, ffn, hidden


@torch.no_grad()
def block_influence(model, ids):
    """ShortGPT's block influence per decoder layer: mean over tokens of 1 - cos(layer input, layer output)."""
    bi = torch.zeros(len(model.model.layers))
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(mod, args, kwargs, out, i=i):
            x = (args[0] if args else kwargs["hidden_states"]).float()
            y = (out[0] if isinstance(out, tuple) else out).float()
            bi[i] += (1 - torch.nn.functional.cosine_similarity(x, y, dim=-1)).mean()
        hooks.append(layer.register_forward_hook(hook, with_kwargs=True))
    for i in range(0, ids.shape[0], 8):
        model(input_ids=ids[i:i + 8])
    for h in hooks:
        h.remove()
    return bi


def magnitude_scores(model):
    cfg = model.config
    H = cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    heads, ffn = [], []
    for layer in model.model.layers:
        o = layer.self_attn.o_proj.weight.float()
        heads.append(o.view(o.shape[0], H, hd).norm(dim=(0, 2)))
        m = layer.mlp
        ffn.append(m.down_proj.weight.float().norm(dim=0) * m.up_proj.weight.float().norm(dim=1) *
                   m.gate_proj.weight.float().norm(dim=1))
    hidden = model.model.embed_tokens.weight.float().norm(dim=0)
    return torch.stack(heads), torch.stack(ffn), hidden


def select_heads(scores, H, KV, heads_out, kv_out):
    q = H // KV
    per = heads_out // kv_out
    groups = []
    for g in range(KV):
        s = scores[g * q:(g + 1) * q]
        top = torch.topk(s, per).indices.sort().values + g * q
        groups.append((scores[top].sum().item(), g, top))
    groups.sort(key=lambda t: -t[0])
    kept = sorted(groups[:kv_out], key=lambda t: t[1])
    return [g for _, g, _ in kept], torch.cat([t for _, _, t in kept])


@torch.no_grad()
def slice_model(model, shape, heads_s, ffn_s, hidden_s, kept_layers=None):
    cfg = model.config
    kept_layers = list(range(cfg.num_hidden_layers)) if kept_layers is None else kept_layers
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    hid = torch.topk(hidden_s, shape["hidden_size"]).indices.sort().values
    new_cfg = transformers.AutoConfig.for_model(**{**cfg.to_dict(), **shape, "head_dim": hd})
    sd = model.state_dict()
    out = {}
    def rows(idx, h): return torch.cat([torch.arange(i * h, (i + 1) * h) for i in idx.tolist()])
    for new, i in enumerate(kept_layers):
        p = f"model.layers.{i}."
        kvk, qk = select_heads(heads_s[i], H, KV, shape["num_attention_heads"], shape["num_key_value_heads"])
        f = torch.topk(ffn_s[i], shape["intermediate_size"]).indices.sort().values
        qr, kr = rows(qk, hd), rows(torch.tensor(kvk), hd)
        q = f"model.layers.{new}."
        out[q + "self_attn.q_proj.weight"] = sd[p + "self_attn.q_proj.weight"][qr][:, hid]
        out[q + "self_attn.k_proj.weight"] = sd[p + "self_attn.k_proj.weight"][kr][:, hid]
        out[q + "self_attn.v_proj.weight"] = sd[p + "self_attn.v_proj.weight"][kr][:, hid]
        out[q + "self_attn.o_proj.weight"] = sd[p + "self_attn.o_proj.weight"][hid][:, qr]
        out[q + "mlp.gate_proj.weight"] = sd[p + "mlp.gate_proj.weight"][f][:, hid]
        out[q + "mlp.up_proj.weight"] = sd[p + "mlp.up_proj.weight"][f][:, hid]
        out[q + "mlp.down_proj.weight"] = sd[p + "mlp.down_proj.weight"][hid][:, f]
        out[q + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"][hid]
        out[q + "post_attention_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"][hid]
        if cfg.model_type == "gemma3_text":
            # Gemma: q/k norms over head_dim (kept whole), the MLP's input and output norms; the embedding is
            # scaled by sqrt(hidden_size), so with fewer channels the branch output norms (1 + w) are scaled by
            # sqrt(kept / hidden) to keep the residual stream's proportions (as our export does).
            c = (shape["hidden_size"] / cfg.hidden_size) ** 0.5
            for n in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
                out[q + n] = sd[p + n]
            out[q + "pre_feedforward_layernorm.weight"] = sd[p + "pre_feedforward_layernorm.weight"][hid]
            for n in ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight"):
                out[q + n] = ((sd[p + n][hid].double() + 1) * c - 1).to(sd[p + n].dtype)
    out["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"][:, hid]
    out["model.norm.weight"] = sd["model.norm.weight"][hid]
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"][:, hid]
    small = transformers.AutoModelForCausalLM.from_config(new_cfg, dtype=next(model.parameters()).dtype)
    missing, unexpected = small.load_state_dict(out, strict=False)
    assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
    small.tie_weights()
    return small.eval()


def save(model, side_files_from, out):
    """`model` in bf16 with the tokenizer and generation files of `side_files_from`, published by rename."""
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp)
    for side in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                 "chat_template.jinja"):
        if os.path.exists(os.path.join(side_files_from, side)):
            shutil.copy(os.path.join(side_files_from, side), tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def baseline_cmd(a):
    dense = load(a.dense)
    with open(os.path.join(a.shape_from, "config.json")) as f:
        c = json.load(f)
    shape = {k: c[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                               "num_hidden_layers")}
    L = dense.config.num_hidden_layers
    calib = windows(a.calib, 0, a.calib_windows)
    if a.kind == "activation":
        heads, ffn, hidden = activation_scores(dense, calib)
        kept = sorted(torch.topk(block_influence(dense, calib), shape["num_hidden_layers"]).indices.tolist())
    else:
        heads, ffn, hidden = magnitude_scores(dense)
        kept = list(range(shape["num_hidden_layers"]))
    if "layer_types" in c:
        shape["layer_types"] = [dense.config.layer_types[i] for i in kept] if getattr(dense.config, "layer_types", None) else c["layer_types"]
    small = slice_model(dense, shape, heads, ffn, hidden, kept if shape["num_hidden_layers"] < L else None)
    save(small, a.dense, a.out)
    print(json.dumps({"baseline": a.kind, "out": a.out, "shape": shape, "kept_layers": kept,
                      "parameters": sum(p.numel() for p in small.parameters())}))


def generate_cmd(a):
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    model = load(a.model)
    x = tok(a.prompt, return_tensors="pt")
    y = model.generate(**x, max_new_tokens=a.tokens, do_sample=False)
    text = tok.decode(y[0][x["input_ids"].shape[1]:], skip_special_tokens=True)
    print(json.dumps({"prompt": a.prompt, "completion": text}))


def speed_cmd(a):
    torch.set_num_threads(a.threads)
    import statistics
    import time
    prompt = torch.randint(100, 10000, (1, a.prompt), generator=torch.Generator().manual_seed(0))
    rows = []
    for path in a.models:
        model = load(path)
        eos = model.generation_config.eos_token_id
        model.generation_config.pad_token_id = eos[0] if isinstance(eos, list) else eos  # Gemma lists two

        def timed(new):
            t0 = time.perf_counter()
            y = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                               min_new_tokens=new, do_sample=False)
            assert y.shape[1] == a.prompt + new
            return time.perf_counter() - t0
        timed(4)  # warm-up
        prefill = statistics.median(timed(1) for _ in range(a.repeats))
        full = statistics.median(timed(a.new + 1) for _ in range(a.repeats))
        row = {"model": path, "layers": model.config.num_hidden_layers,
               "parameters": sum(p.numel() for p in model.parameters()),
               "prefill_s": prefill, "decode_tokens_per_s": a.new / (full - prefill)}
        if rows:
            row["prefill_speedup"] = rows[0]["prefill_s"] / prefill
            row["decode_speedup"] = row["decode_tokens_per_s"] / rows[0]["decode_tokens_per_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model


@torch.no_grad()
def kl_cmd(a):
    teacher, model = load(a.teacher), load(a.model)
    ids = windows(a.tokens, 0, a.samples)
    kl_sum, nll_sum, n = 0.0, 0.0, 0
    for i in range(0, ids.shape[0], 8):
        x = ids[i:i + 8]
        lt = torch.log_softmax(teacher(input_ids=x).logits.float(), -1)
        lm = torch.log_softmax(model(input_ids=x).logits.float(), -1)
        kl_sum += (lt.exp() * (lt - lm)).sum(-1).sum().item()
        nll_sum += -lm[:, :-1].gather(-1, x[:, 1:, None]).sum().item()
        n += x.numel()
    nll_mean = nll_sum / (n - ids.shape[0])
    print(json.dumps({"model": a.model, "teacher": a.teacher, "tokens": a.tokens, "windows": ids.shape[0],
                      "kl": kl_sum / n, "ppl": math.exp(nll_mean)}))


class _Stop(Exception):
    pass


@torch.no_grad()
def _refit_one(model, ids, module, capture, proj):
    """Runs `model` on `ids` up to `module` (capture(args, kwargs) -> (kept inputs, target) at it), then
    solves the ridge least squares for proj's weight in place."""
    g, c = 0, 0

    def hook(mod, args, kwargs):
        nonlocal g, c
        a, y = capture(args, kwargs)
        a, y = a.reshape(-1, a.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
        g, c = g + a.T @ a, c + a.T @ y
        raise _Stop()
    h = module.register_forward_pre_hook(hook, with_kwargs=True)
    for i in range(0, ids.shape[0], 8):
        try:
            model(input_ids=ids[i:i + 8])
        except _Stop:
            pass
    h.remove()
    g = g + 1e-4 * g.diagonal().mean() * torch.eye(g.shape[0], dtype=torch.float64)
    proj.weight.copy_(torch.linalg.solve(g, c).T.to(proj.weight.dtype))


def refit_cmd(a):
    dense, model = load(a.dense), load(a.model)
    assert dense.config.hidden_size == model.config.hidden_size, "refit: the hidden size must be the dense one's"
    ids = windows(a.calib, 0, a.calib_windows)
    assert model.config.num_hidden_layers == dense.config.num_hidden_layers, "refit: every layer kept"
    for sl, dl in zip(model.model.layers, dense.model.layers):
        # As calibrate.reconstruct: a projection that kept every input is left alone (its solution is the dense one).
        if sl.self_attn.o_proj.in_features < dl.self_attn.o_proj.in_features:
            held = {}
            pre = sl.self_attn.o_proj.register_forward_pre_hook(lambda m, x: held.update(a=x[0]))

            def attn(args, kwargs, sl=sl, dl=dl):
                sl.self_attn.forward(*args, **kwargs)  # .forward skips this module's hooks; o_proj's fills held["a"]
                return held["a"], dl.self_attn(*args, **kwargs)[0]
            _refit_one(model, ids, sl.self_attn, attn, sl.self_attn.o_proj)
            pre.remove()

        def mlp(args, kwargs, sl=sl, dl=dl):
            x = args[0] if args else kwargs["hidden_states"]
            return sl.mlp.act_fn(sl.mlp.gate_proj(x)) * sl.mlp.up_proj(x), dl.mlp(x)
        if sl.mlp.down_proj.in_features < dl.mlp.down_proj.in_features:
            _refit_one(model, ids, sl.mlp, mlp, sl.mlp.down_proj)
    save(model, a.model, a.out)
    print(json.dumps({"refit": a.model, "out": a.out, "windows": ids.shape[0]}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("ppl")
    q.add_argument("model"), q.add_argument("tokens")
    q.add_argument("--samples", type=int, default=0), q.add_argument("--first", type=int, default=0)
    b = sub.add_parser("baseline")
    b.add_argument("kind", choices=["activation", "magnitude"])
    b.add_argument("dense"), b.add_argument("shape_from"), b.add_argument("calib"), b.add_argument("out")
    b.add_argument("--calib-windows", type=int, default=32)
    g = sub.add_parser("generate")
    g.add_argument("model"), g.add_argument("--prompt", default="The Debian Policy Manual describes")
    g.add_argument("--tokens", type=int, default=24)
    v = sub.add_parser("speed")
    v.add_argument("models", nargs="+")
    v.add_argument("--prompt", type=int, default=256), v.add_argument("--new", type=int, default=64)
    v.add_argument("--threads", type=int, default=2), v.add_argument("--repeats", type=int, default=3)
    k = sub.add_parser("kl")
    k.add_argument("teacher"), k.add_argument("model"), k.add_argument("tokens")
    k.add_argument("--samples", type=int, default=0)
    r = sub.add_parser("refit")
    r.add_argument("dense"), r.add_argument("model"), r.add_argument("calib"), r.add_argument("out")
    r.add_argument("--calib-windows", type=int, default=256)
    a = p.parse_args()
    {"ppl": ppl_cmd, "baseline": baseline_cmd, "generate": generate_cmd, "speed": speed_cmd, "kl": kl_cmd,
     "refit": refit_cmd}[a.cmd](a)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
