"""The LLaMA-family adapters (mistral, qwen2, qwen3, gemma3_text, phi3, gpt_neox) against transformers' own models, like LLaMA's:
logits in fp32 and bf16 (padded and not), parameter counts, keep-all export byte for byte, and a pruned
pipeline run whose export loads with from_pretrained (no missing, unexpected or mismatched keys) and
computes what our forward of it computes. Mistral's sliding window is exact within the window and
refused beyond it; Gemma 3's windowed layers are computed exactly beyond it (the test sequences are longer
than its window), as are Phi-3's (every layer); Phi-3's LongRoPE is exact within
original_max_position_embeddings and refused beyond it; an unknown model_type names the supported ones.
"""
import json

import numpy as np
import pytest
import torch

from test_models import assert_loads_cleanly, compare_causal_lm, run_forward, tensors_of, token_batch

transformers = pytest.importorskip("transformers")

VOCAB = 300

FAMILY = {
    # name: (config class, model class, config kwargs)
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM",
                   dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True, rope_theta=1e6)),
    # head_dim independent of hidden / heads, biases on q, k, v and o.
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(num_attention_heads=6, num_key_value_heads=2, head_dim=24, attention_bias=True,
                   tie_word_embeddings=True)),
    "qwen3_no_bias": ("Qwen3Config", "Qwen3ForCausalLM",
                      dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False)),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(num_attention_heads=8, num_key_value_heads=4, sliding_window=32, tie_word_embeddings=False)),
    # Windowed and full layers with their own RoPE bases, a window shorter than the sequences, head_dim and
    # query_pre_attn_scalar independent of hidden / heads, tied embeddings.
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24, query_pre_attn_scalar=20,
                    sliding_window=6, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                     "full_attention": {"rope_type": "linear", "rope_theta": 5000.0,
                                                        "factor": 4.0}})),
    # The layer kinds from sliding_window_pattern, soft-capped logits, biases, an untied head. The attention
    # soft-cap is set but transformers' Gemma3Attention never applies it (no softcap reaches its attention
    # functions): ours must not either.
    "gemma3_softcap": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                       dict(num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=5,
                            sliding_window_pattern=2, attn_logit_softcapping=3.0, final_logit_softcapping=2.5,
                            attention_bias=True, tie_word_embeddings=False)),
    # Fused qkv_proj ([q | k | v] rows) and gate_up_proj ([gate | up]), half of each head rotated, every layer
    # windowed by a window shorter than the sequences.
    "phi3": ("Phi3Config", "Phi3ForCausalLM",
             dict(num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5, sliding_window=7,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    # LongRoPE within original_max_position_embeddings (short factors, cos and sin scaled), no GQA, tied.
    "phi3_longrope": ("Phi3Config", "Phi3ForCausalLM",
                      dict(num_attention_heads=8, num_key_value_heads=8, original_max_position_embeddings=128,
                           rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.5, 2.0, 3.0],
                                         "long_factor": [2.0, 3.0, 4.0, 5.0]},
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    # q, k, v interleaved per head in query_key_value, LayerNorms with biases, a parallel residual, a quarter
    # of each head rotated, GeLU MLP with biases, untied head.
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                 dict(num_attention_heads=4, rotary_pct=0.25, use_parallel_residual=True, bos_token_id=0,
                      eos_token_id=0)),
    # The sequential residual, no attention biases, half of each head rotated, a RoPE base of its own.
    "gpt_neox_sequential": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                            dict(num_attention_heads=8, rotary_pct=0.5, rotary_emb_base=500.0,
                                 use_parallel_residual=False, attention_bias=False, bos_token_id=0, eos_token_id=0)),
}


def model_type(variant):
    return getattr(transformers, FAMILY[variant][0]).model_type


def make(path, name, dtype=torch.float32):
    config_cls, model_cls, kwargs = FAMILY[name]
    torch.manual_seed(sum(map(ord, name)))
    config = getattr(transformers, config_cls)(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                                               num_hidden_layers=3, max_position_embeddings=256,
                                               initializer_range=0.1, **kwargs)
    model = getattr(transformers, model_cls)(config).eval()
    # Random RMSNorm weights (transformers initializes them to 1, which would hide a missing norm; Gemma's
    # scale by 1 + weight and start at 0).
    offset = 0 if config.model_type == "gemma3_text" else 1
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith("layernorm.weight") or n.endswith("layer_norm.weight"):
                p.copy_(offset + 0.3 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model.to(dtype)


@pytest.mark.parametrize("variant", list(FAMILY))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_logits_match_transformers(tmp_path, cli, variant, dtype):
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    model = make(tmp_path / "model", variant, torch_dtype)
    compare_causal_lm(cli, model, tmp_path / "model", tmp_path, dtype, variant)


@pytest.mark.parametrize("variant", list(FAMILY))
def test_parameter_count_and_keep_all_export(tmp_path, cli, inspect_json, variant):
    src, dst = tmp_path / "model", tmp_path / "export"
    model = make(src, variant)
    info = inspect_json(src)
    assert info["model_type"] == model_type(variant)
    # The cost model's count (from config.json and the adapter's traits) is transformers' count.
    assert info["config_parameters"] == info["parameters"] == sum(p.numel() for p in model.parameters()), info
    cli("export", "--keep-all", src, dst)
    a, b = tensors_of(src), tensors_of(dst)
    assert a.keys() == b.keys() and all(torch.equal(a[k][1], b[k][1]) for k in a)
    exported = assert_loads_cleanly(transformers.AutoModelForCausalLM, dst)
    ids, mask = token_batch(VOCAB)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits,
                           exported(input_ids=ids, attention_mask=mask).logits)


def test_mistral_beyond_its_sliding_window_is_refused(tmp_path, cli):
    make(tmp_path / "model", "mistral")
    ids = torch.randint(0, VOCAB, (1, 33), generator=torch.Generator().manual_seed(0))
    from safetensors.torch import save_file
    save_file({"input_ids": ids}, tmp_path / "in.safetensors")
    p = cli("forward", tmp_path / "model", "--inputs", tmp_path / "in.safetensors", "--output",
            tmp_path / "out.safetensors", check=False)
    assert p.returncode != 0 and "exceeds the sliding_window 32" in p.stderr, p.stderr


def test_phi3_beyond_longrope_original_max_is_refused(tmp_path, cli):
    make(tmp_path / "model", "phi3_longrope")
    ids = torch.randint(0, VOCAB, (1, 129), generator=torch.Generator().manual_seed(0))
    from safetensors.torch import save_file
    save_file({"input_ids": ids}, tmp_path / "in.safetensors")
    p = cli("forward", tmp_path / "model", "--inputs", tmp_path / "in.safetensors", "--output",
            tmp_path / "out.safetensors", check=False)
    assert p.returncode != 0 and "exceed original_max_position_embeddings 128" in p.stderr, p.stderr


def test_gpt_neox_head_stored_as_lm_head(tmp_path, cli):
    """transformers stores GPT-NeoX's head as embed_out.weight (its module is lm_head, mapped on load and save);
    a checkpoint holding lm_head.weight instead is read too, and an export keeps the name it was given."""
    from safetensors.torch import load_file, save_file
    model = make(tmp_path / "model", "gpt_neox")
    weights = load_file(tmp_path / "model" / "model.safetensors")
    weights["lm_head.weight"] = weights.pop("embed_out.weight")
    save_file(weights, tmp_path / "model" / "model.safetensors", metadata={"format": "pt"})
    compare_causal_lm(cli, model, tmp_path / "model", tmp_path, "fp32", "gpt_neox")
    cli("export", "--keep-all", tmp_path / "model", tmp_path / "export")
    assert "lm_head.weight" in tensors_of(tmp_path / "export")


def test_unknown_model_type_lists_the_supported_ones(tmp_path, cli):
    make(tmp_path / "model", "qwen2")
    cfg = json.load(open(tmp_path / "model" / "config.json"))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(tmp_path / "model" / "config.json", "w"))
    p = cli("inspect", tmp_path / "model", check=False)
    assert p.returncode != 0
    assert "unsupported model_type 'gpt2'" in p.stderr
    assert "bert, gemma3_text, gpt_neox, llama, mistral, phi3, qwen2, qwen3, vit" in p.stderr, p.stderr


SEQ = 16


@pytest.mark.parametrize("variant,hidden", [("qwen2", True), ("qwen3", False), ("mistral", True), ("gemma3", True),
                                            ("gemma3_softcap", False), ("phi3", True), ("phi3_longrope", True),
                                            ("gpt_neox", True), ("gpt_neox_sequential", False)])
def test_pruned_export_loads_and_matches(tmp_path, cli, mpirun, variant, hidden):
    make(tmp_path / "model", variant)
    np.random.default_rng(0).integers(0, VOCAB, size=48 * SEQ).astype(np.uint16).tofile(tmp_path / "tokens.bin")
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
[run]
dir = "{tmp_path / 'run'}"
threads_per_rank = 1
[model]
path = "{tmp_path / 'model'}"
dtype = "fp32"
[data]
format = "tokens_bin"
path = "{tmp_path / 'tokens.bin'}"
seq_len = {SEQ}
[teacher]
cache_root = "{tmp_path / 'cache'}"
top_k = 32
[gates]
hidden = {"true" if hidden else "false"}
[train]
steps = 6
warmup = 2
micro_batch = 4
holdout = 8
importance_batches = 2
[budget]
target = 0.6
[search]
ffn_multiple = 16
hidden_multiple = 16
probe_shapes = 2
probe_steps = 2
probe_samples = 4
[calibrate]
steps = 4
""")
    mpirun(1, cfg)
    export = tmp_path / "run" / "export" / "slim"
    plan = json.load(open(tmp_path / "run" / "plan" / "plan.json"))["shape"]
    assert plan["cost_ratio"] <= 0.6
    written = json.load(open(export / "config.json"))
    assert written["model_type"] == model_type(variant)
    head_dim = written.get("head_dim", written["hidden_size"] // written["num_attention_heads"])  # gpt_neox: derived
    assert written["num_attention_heads"] == plan["num_attention_heads"] and head_dim == plan["head_dim"]
    model = assert_loads_cleanly(transformers.AutoModelForCausalLM, export)
    assert sum(p.numel() for p in model.parameters()) == plan["parameters"]
    ids = torch.from_numpy(np.fromfile(tmp_path / "tokens.bin", dtype=np.uint16).astype(np.int64).reshape(-1, SEQ)[-8:])
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    ours = run_forward(cli, export, tmp_path, {"input_ids": ids}, "fp32")["logits"]
    rel = ((theirs - ours).abs().max() / theirs.abs().max()).item()
    assert rel <= 1e-4, rel
    summary = json.load(open(tmp_path / "run" / "export" / "summary.json"))
    assert summary["verify"]["passed"], summary["verify"]
