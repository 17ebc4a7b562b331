"""Writes the tiny LLaMA fixture under tests/data/tiny-llama with transformers itself (random
weights, fp32), plus tests/data/tiny-tokens.bin. Run once; the outputs are committed."""
import os
import sys

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data")
torch.manual_seed(0)
config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=4, max_position_embeddings=64,
                     tie_word_embeddings=True)
LlamaForCausalLM(config).save_pretrained(os.path.join(out, "tiny-llama"))
np.random.default_rng(0).integers(0, 64, size=256, dtype=np.uint16).tofile(os.path.join(out, "tiny-tokens.bin"))
