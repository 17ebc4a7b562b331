"""Torch reference for heal's intermediate-state term (training/distill.h boundary_state_loss), written from its
definition: over the boundaries, the mean of the per-token relative squared error |s - t|^2 / |t|^2 of the student's
residual stream (its channels placed at the teacher's channels `channels`, the dropped ones as zeros) against the
teacher's, over the tokens of `mask`. Reads IN.safetensors (s0.., t0.., mask, channels), prints the loss and writes
the gradient in every student block to OUT.safetensors (g0..)."""
import sys

import torch
from safetensors.torch import load_file, save_file

t = load_file(sys.argv[1])
n = sum(1 for k in t if k.startswith("s"))
mask = t["mask"].double()
channels = t["channels"].long()
students = [t[f"s{j}"].double().requires_grad_(True) for j in range(n)]
total = 0
for j, s in enumerate(students):
    teacher = t[f"t{j}"].double()
    wide = torch.zeros(*s.shape[:-1], teacher.shape[-1], dtype=torch.float64)
    wide[..., channels] = s
    rel = ((wide - teacher) ** 2).sum(-1) / (teacher ** 2).sum(-1).clamp_min(1e-12)
    total = total + (rel * mask).sum() / mask.sum()
loss = total / n
loss.backward()
print(f"{loss.item():.12e}")
save_file({f"g{j}": s.grad.float().contiguous() for j, s in enumerate(students)}, sys.argv[2])
