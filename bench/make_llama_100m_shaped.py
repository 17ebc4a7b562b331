"""Writes a ~100M-parameter LLaMA-style model (hidden 768, 8 layers, 12 heads, 4 kv heads, FFN 2048,
vocab 32000, fp32, random weights) and a token HDF5 of SAMPLES x 128 tokens, for stage benchmarks
that must finish on 2 cores. No download involved.
    python bench/make_llama_100m_shaped.py OUT_DIR [SAMPLES]"""
import os
import sys

import h5py
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

out = sys.argv[1]
samples = int(sys.argv[2]) if len(sys.argv) > 2 else 128
torch.manual_seed(0)
config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                     num_attention_heads=12, num_key_value_heads=4, head_dim=64, tie_word_embeddings=False)
LlamaForCausalLM(config).save_pretrained(os.path.join(out, "model"))
with h5py.File(os.path.join(out, "tokens.h5"), "w") as f:
    f["input_ids"] = np.random.default_rng(0).integers(0, 32000, size=(samples, 128)).astype(np.int32)
