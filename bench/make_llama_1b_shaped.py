"""Writes a LLaMA-3.2-1B-shaped Hugging Face directory (bf16, 2.47 GB, one model.safetensors, tied
embeddings) with arbitrary weights, for benchmarks at the real size. No download involved."""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
c = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                rope_theta=500000.0, dtype="bfloat16")
c.save_pretrained(out)
h, kv, ffn = c.hidden_size, c.num_key_value_heads * c.head_dim, c.intermediate_size
shapes = {"model.embed_tokens.weight": (c.vocab_size, h), "model.norm.weight": (h,)}
for i in range(c.num_hidden_layers):
    p = f"model.layers.{i}."
    shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                   p + "mlp.gate_proj.weight": (ffn, h), p + "mlp.up_proj.weight": (ffn, h),
                   p + "mlp.down_proj.weight": (h, ffn), p + "input_layernorm.weight": (h,),
                   p + "post_attention_layernorm.weight": (h,)})
g = torch.Generator().manual_seed(0)
save_file({k: torch.randn(s, generator=g, dtype=torch.float32).to(torch.bfloat16) if len(s) == 1 else
           torch.empty(s, dtype=torch.bfloat16).normal_(0, 0.02, generator=g) for k, s in shapes.items()},
          os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
print(f"wrote {out}: {sum(a * (b if len(s) > 1 else 1) for s in shapes.values() for a, b in [(s[0], s[-1])])} parameters")
