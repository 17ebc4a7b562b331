"""Writes a ViT-Base/16-shaped ViTForImageClassification (224x224, 1000 labels, fp32) with random
weights, for benchmarks at the real size. No download involved."""
import sys

import torch
from transformers import ViTConfig, ViTForImageClassification

torch.manual_seed(0)
ViTForImageClassification(ViTConfig(num_labels=1000)).save_pretrained(sys.argv[1])
