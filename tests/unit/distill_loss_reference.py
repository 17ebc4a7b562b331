"""Torch reference for topk_kl_loss, written independently (probabilities, not log-sum-exps):
reads IN.safetensors (student, values, indices, lse, mask) and prints the loss for T = 1, 2, 0.5 and
with the mask, one per line."""
import sys

import torch
from safetensors.torch import load_file

t = load_file(sys.argv[1])
s, v, idx, lse, mask = (t["student"].double(), t["values"].double(), t["indices"].long(), t["lse"].double(),
                        t["mask"].double())
q = torch.softmax(s, -1)
q_top = q.gather(-1, idx)
q_tail = 1.0 - q_top.sum(-1, keepdim=True)
p_top = torch.exp(v - lse[:, None])
p_tail = (1.0 - p_top.sum(-1, keepdim=True)).clamp_min(0)
P = torch.cat([p_top, p_tail], -1)
Q = torch.cat([q_top, q_tail], -1)


def kl(P, Q, T):
    if T != 1:
        P = P ** (1 / T) / (P ** (1 / T)).sum(-1, keepdim=True)
        Q = Q ** (1 / T) / (Q ** (1 / T)).sum(-1, keepdim=True)
    terms = torch.where(P > 0, P * (torch.log(P) - torch.log(Q)), torch.zeros_like(P))
    return terms.sum(-1) * T * T


for T in (1.0, 2.0, 0.5):
    print(f"{kl(P, Q, T).mean().item():.12e}")
print(f"{((kl(P, Q, 1.0) * mask).sum() / mask.sum()).item():.12e}")
