"""How well each teacher-cache form points distillation the right way (issue 22): on a real batch, the
gradient in the student's logits of the loss each cache allows, against the exact full-vocabulary
KL(teacher || student) gradient softmax(s) - softmax(t): cosine and relative error, for top-k + tail
(what the cache stored until now; k = 16, 64) and for D sampled tokens with counts (D = 6, 12, 24; one
draw and the mean of several, to show the bias goes to 0 while top-k's stays). Bytes per token of each.

    python bench/estimator_bias.py TEACHER_DIR STUDENT_DIR TOKENS.h5 [--windows 4] [--draws 12] [--seeds 8]

The estimators are written here from their definitions (independent of the C++); the C++ sampled loss is
checked for unbiasedness by tests/unit/test_gates_loss.cpp.
"""
import argparse
import json

import h5py
import numpy as np
import torch
import transformers


def topk_tail_grad(s, t, k):
    """Gradient of KL over the teacher's top-k + one tail bucket (the coarsened distributions)."""
    s = s.detach().requires_grad_(True)
    lt = torch.log_softmax(t, -1)
    v, i = lt.topk(k, -1)
    ls = torch.log_softmax(s, -1)
    st = ls.gather(-1, i)
    t_tail = torch.log1p(-v.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-12))
    s_tail = torch.log1p(-st.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-7))
    pt = torch.cat([v, t_tail], -1)
    ps = torch.cat([st, s_tail], -1)
    (pt.exp() * (pt - ps)).sum(-1).sum().backward()
    return s.grad


def sampled_grad(s, t, draws, gen):
    """Gradient of -H + mean(-log q(draw)) for `draws` tokens drawn from the teacher: q - counts / D."""
    p = torch.softmax(t, -1)
    idx = torch.multinomial(p, draws, replacement=True, generator=gen)
    counts = torch.zeros_like(p).scatter_add_(-1, idx, torch.ones_like(idx, dtype=p.dtype))
    return torch.softmax(s, -1) - counts / draws


def compare(g, exact):
    g, e = g.flatten(), exact.flatten()
    return {"cosine": torch.nn.functional.cosine_similarity(g, e, dim=0).item(),
            "relative_error": ((g - e).norm() / e.norm()).item()}


def main():
    a = argparse.ArgumentParser()
    a.add_argument("teacher"), a.add_argument("student"), a.add_argument("tokens")
    a.add_argument("--windows", type=int, default=4), a.add_argument("--seeds", type=int, default=8)
    args = a.parse_args()
    torch.set_grad_enabled(False)
    with h5py.File(args.tokens, "r") as f:
        ids = torch.from_numpy(f["input_ids"][-args.windows:].astype(np.int64))
    teacher = transformers.AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32).eval()
    student = transformers.AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32).eval()
    t = teacher(input_ids=ids).logits.double().flatten(0, 1)
    s = student(input_ids=ids).logits.double().flatten(0, 1)
    vocab = t.shape[-1]
    exact = torch.softmax(s, -1) - torch.softmax(t, -1)
    rows = []
    with torch.enable_grad():
        for k in (16, 64):
            rows.append({"cache": f"top-{k} + tail", "bytes_per_token": k * 6 + 4, **compare(topk_tail_grad(s, t, k), exact)})
    gen = torch.Generator().manual_seed(0)
    for d in (6, 12, 24):
        one = compare(sampled_grad(s, t, d, gen), exact)
        mean = sum(sampled_grad(s, t, d, gen) for _ in range(args.seeds)) / args.seeds
        rows.append({"cache": f"sampled, {d} draws", "bytes_per_token": 4 * d + 4, **one,
                     f"cosine_mean_of_{args.seeds}": compare(mean, exact)["cosine"]})
    for r in rows:
        print(json.dumps(r))
    print(json.dumps({"tokens": t.shape[0], "vocab": vocab,
                      "full_kl": (torch.softmax(t, -1) * (torch.log_softmax(t, -1) - torch.log_softmax(s, -1))).sum(-1).mean().item()}))


if __name__ == "__main__":
    main()
