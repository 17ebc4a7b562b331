"""Writes tiny Hugging Face models with transformers itself (random weights) and a flat uint16 token
file, for the demo and the test fixtures (tests/data/, committed).

    python launch/make_tiny_models.py OUT_DIR [--hidden 16 --layers 2 --vocab 64 --tokens 256] [--vit]

writes OUT_DIR/tiny-llama/ (config.json, model.safetensors, generation_config.json),
OUT_DIR/tiny-tokens.bin and, with --vit, OUT_DIR/tiny-vit/ (a 32x32 ViTForImageClassification).
Deterministic for a given seed.
"""
import argparse
import os

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--hidden", type=int, default=16)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--kv-heads", type=int, default=2)
p.add_argument("--ffn", type=int, default=32)
p.add_argument("--vocab", type=int, default=64)
p.add_argument("--tokens", type=int, default=256)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--vit", action="store_true")
a = p.parse_args()

torch.manual_seed(a.seed)
config = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                     num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, head_dim=a.hidden // a.heads,
                     max_position_embeddings=256, tie_word_embeddings=True)
LlamaForCausalLM(config).save_pretrained(os.path.join(a.out, "tiny-llama"))
rng = np.random.default_rng(a.seed)
rng.integers(0, a.vocab, size=a.tokens, dtype=np.uint16).tofile(os.path.join(a.out, "tiny-tokens.bin"))
if a.vit:
    torch.manual_seed(a.seed)
    vit = ViTConfig(image_size=32, patch_size=8, hidden_size=a.hidden, num_hidden_layers=a.layers,
                    num_attention_heads=a.heads, intermediate_size=a.ffn, num_labels=5)
    ViTForImageClassification(vit).save_pretrained(os.path.join(a.out, "tiny-vit"))
print(f"wrote {os.path.join(a.out, 'tiny-llama')} and {os.path.join(a.out, 'tiny-tokens.bin')}")
