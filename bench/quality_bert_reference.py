"""The independent side of bench/quality_bert.sh: transformers as the reference for a BERT sentence
encoder (all-MiniLM-L6-v2).

    python bench/quality_bert_reference.py baseline {activation,magnitude} DENSE_DIR SHAPE_FROM_DIR CALIB.h5 OUT_DIR
    python bench/quality_bert_reference.py compare DENSE_DIR STUDENT_DIR PLAN.json EVAL.h5 [--samples N]

baseline: one-shot pruning at the shape of SHAPE_FROM_DIR's config.json (ours), no training, written as a
Hugging Face directory (BertModel):
  activation: over the first 512 sentences of CALIB.h5 (real tokens only), each attention head scores the
    mean L2 norm of its context vectors (before attention.output.dense), each FFN channel the mean
    |gelu(intermediate)|, each hidden channel the mean |x| of every LayerNorm output; each layer keeps its
    top heads and channels, the model its top hidden channels.
  magnitude: the same from weight norms: head h scores ||attention.output.dense[:, head h columns]||, FFN
    channel c ||output.dense[:, c]|| x ||intermediate.dense[c]||, hidden channel ||word_embeddings[:, c]||.
compare: the metrics of our evaluate stage, computed here on the same sentences: the cosine of mean-pooled
embeddings in the teacher's coordinates (the student's channels at PLAN's "hidden", or at the channels
the student's "kept_hidden.json" names), on the kept channels, and the correlation of pairwise
similarities. Prints one JSON line.
"""
import argparse
import json
import os

import h5py
import torch
import transformers


def sentences(path, n, first=0):
    with h5py.File(path, "r") as f:
        ids = torch.from_numpy(f["input_ids"][first:first + n].astype("int64"))
        mask = torch.from_numpy(f["attention_mask"][first:first + n].astype("int64"))
    return ids, mask


def pool(h, mask):
    m = mask.unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1).clamp_min(1)


def activation_scores(model, ids, mask):
    cfg = model.config
    L, H, d = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    heads, ffn, hidden = torch.zeros(L, H), torch.zeros(L, cfg.intermediate_size), torch.zeros(cfg.hidden_size)
    hooks = []
    state = {}
    for i, layer in enumerate(model.encoder.layer):
        def ctx(mod, inp, i=i):
            x, m = inp[0], state["mask"]
            heads[i] += (x.view(*x.shape[:2], H, d).norm(dim=-1) * m.unsqueeze(-1)).sum((0, 1))
        def act(mod, inp, i=i):
            ffn[i] += (inp[0].abs() * state["mask"].unsqueeze(-1)).sum((0, 1))
        hooks += [layer.attention.output.dense.register_forward_pre_hook(ctx),
                  layer.output.dense.register_forward_pre_hook(act)]
    def norm_out(mod, inp, out):  # returns None: the output is left as it is
        hidden.add_((out.abs() * state["mask"].unsqueeze(-1)).sum((0, 1)))
    for name, mod in model.named_modules():
        if name.endswith("LayerNorm"):
            hooks.append(mod.register_forward_hook(norm_out))
    with torch.no_grad():
        for a in range(0, len(ids), 64):
            state["mask"] = mask[a:a + 64].float()
            model(input_ids=ids[a:a + 64], attention_mask=mask[a:a + 64])
    for h in hooks:
        h.remove()
    return heads, ffn, hidden


def magnitude_scores(model):
    cfg = model.config
    H, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    heads = torch.stack([l.attention.output.dense.weight.view(cfg.hidden_size, H, d).norm(dim=(0, 2))
                         for l in model.encoder.layer])
    ffn = torch.stack([l.output.dense.weight.norm(dim=0) * l.intermediate.dense.weight.norm(dim=1)
                       for l in model.encoder.layer])
    hidden = model.embeddings.word_embeddings.weight.norm(dim=0)
    return heads, ffn, hidden


def prune(model, shape, heads, ffn, hidden, out):
    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    keep_h = torch.sort(hidden.topk(shape["hidden_size"]).indices).values
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    new = {}
    for k, v in sd.items():
        if k.startswith("embeddings.") and k.endswith("weight") and v.dim() == 2:
            new[k] = v[:, keep_h]
        elif "LayerNorm" in k:
            new[k] = v[keep_h]
        elif k.startswith("pooler.dense.weight"):
            new[k] = v[keep_h][:, keep_h]
        elif k.startswith("pooler.dense.bias"):
            new[k] = v[keep_h]
        elif k.startswith("encoder.layer."):
            i = int(k.split(".")[2])
            hk = torch.sort(heads[i].topk(shape["num_attention_heads"]).indices).values
            q = (hk.unsqueeze(1) * d + torch.arange(d)).reshape(-1)
            f = torch.sort(ffn[i].topk(shape["intermediate_size"]).indices).values
            if ".attention.self." in k:
                new[k] = v[q][:, keep_h] if v.dim() == 2 else v[q]
            elif ".attention.output.dense." in k:
                new[k] = v[keep_h][:, q] if v.dim() == 2 else v[keep_h]
            elif ".intermediate.dense." in k:
                new[k] = v[f][:, keep_h] if v.dim() == 2 else v[f]
            elif ".output.dense." in k:
                new[k] = v[keep_h][:, f] if v.dim() == 2 else v[keep_h]
            else:
                raise SystemExit(f"no rule for {k}")
        else:
            new[k] = v
    c = cfg.to_dict()
    c.update(hidden_size=shape["hidden_size"], num_attention_heads=shape["num_attention_heads"],
             intermediate_size=shape["intermediate_size"])
    slim = transformers.BertModel(transformers.BertConfig(**c), add_pooling_layer="pooler.dense.weight" in new)
    slim.load_state_dict(new, strict=True)
    slim.save_pretrained(out)
    json.dump(keep_h.tolist(), open(os.path.join(out, "kept_hidden.json"), "w"))


def compare(dense_dir, student_dir, plan, evalf, samples):
    t_model = transformers.AutoModel.from_pretrained(dense_dir).eval()
    s_model = transformers.AutoModel.from_pretrained(student_dir).eval()
    kept_file = os.path.join(student_dir, "kept_hidden.json")
    kept = json.load(open(kept_file)) if os.path.exists(kept_file) else json.load(open(plan))["hidden"]
    kept = torch.tensor(kept)
    ids, mask = sentences(evalf, samples)
    cos, cos_kept, tp, sp = [], [], [], []
    with torch.no_grad():
        for a in range(0, len(ids), 64):
            i, m = ids[a:a + 64], mask[a:a + 64]
            t = t_model(input_ids=i, attention_mask=m).last_hidden_state
            s = s_model(input_ids=i, attention_mask=m).last_hidden_state
            wide = torch.zeros_like(t)
            wide[..., kept] = s
            pt, ps, pw = pool(t, m), pool(s, m), pool(wide, m)
            cos.append(torch.nn.functional.cosine_similarity(pw, pt, dim=-1))
            cos_kept.append(torch.nn.functional.cosine_similarity(ps, pt[:, kept], dim=-1))
            tp.append(pt)
            sp.append(ps)
    sim = lambda e: (lambda n: (n @ n.T)[torch.triu_indices(len(n), len(n), 1).unbind()])(
        torch.nn.functional.normalize(torch.cat(e).double(), dim=-1))
    corr = torch.corrcoef(torch.stack([sim(tp), sim(sp)]))[0, 1].item()
    cos = torch.cat(cos)
    print(json.dumps({"samples": len(ids), "cosine": cos.mean().item(), "min_cosine": cos.min().item(),
                      "cosine_kept_channels": torch.cat(cos_kept).mean().item(), "similarity_correlation": corr}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("baseline")
    b.add_argument("kind", choices=["activation", "magnitude"])
    b.add_argument("dense")
    b.add_argument("shape_from")
    b.add_argument("calib")
    b.add_argument("out")
    c = sub.add_parser("compare")
    c.add_argument("dense")
    c.add_argument("student")
    c.add_argument("plan")
    c.add_argument("eval")
    c.add_argument("--samples", type=int, default=512)
    a = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() // 2))
    if a.cmd == "compare":
        return compare(a.dense, a.student, a.plan, a.eval, a.samples)
    model = transformers.AutoModel.from_pretrained(a.dense).eval()
    shape = json.load(open(os.path.join(a.shape_from, "config.json")))
    if a.kind == "activation":
        ids, mask = sentences(a.calib, 512)
        scores = activation_scores(model, ids, mask)
    else:
        scores = magnitude_scores(model)
    prune(model, shape, *scores, a.out)
    print(f"{a.out}: {a.kind} one-shot at hidden {shape['hidden_size']}, heads {shape['num_attention_heads']}, "
          f"ffn {shape['intermediate_size']}")


if __name__ == "__main__":
    main()
