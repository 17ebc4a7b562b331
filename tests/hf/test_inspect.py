"""`hawada-pipeline inspect` against checkpoints saved by transformers itself."""
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")


def test_llama_sharded_bf16(tmp_path, inspect_json):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                                      num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                                      tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json"), "transformers did not shard"

    got = inspect_json(tmp_path)
    assert got["architecture"] == "LlamaForCausalLM"
    assert (got["layers"], got["heads"], got["kv_heads"], got["head_dim"]) == (3, 8, 2, 8)
    assert (got["hidden"], got["ffn"], got["vocab_size"]) == (64, 160, 256)
    assert got["tie_word_embeddings"] is True
    assert got["parameters"] == model.num_parameters() == got["config_parameters"]
    assert got["dtype"] == "BF16" and got["sharded"] is True
    shards = [f["name"] for f in got["files"] if f["name"].endswith(".safetensors")]
    assert len(shards) > 1 and shards == sorted(shards)


def test_llama_untied_fp32_single_file(tmp_path, inspect_json):
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path)
    got = inspect_json(tmp_path)
    assert got["parameters"] == model.num_parameters() == got["config_parameters"]
    assert (got["kv_heads"], got["head_dim"], got["dtype"], got["sharded"]) == (4, 8, "F32", False)
    assert got["tie_word_embeddings"] is False


def test_vit_classifier(tmp_path, inspect_json):
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=96, num_labels=10)
    model = transformers.ViTForImageClassification(config)
    model.save_pretrained(tmp_path)
    got = inspect_json(tmp_path)
    assert got["architecture"] == "ViTForImageClassification"
    assert (got["layers"], got["heads"], got["head_dim"], got["hidden"], got["ffn"]) == (2, 4, 12, 48, 96)
    assert (got["num_labels"], got["image_size"], got["patch_size"]) == (10, 32, 8)
    assert got["parameters"] == model.num_parameters() == got["config_parameters"]


def test_config_parameter_count_matches_transformers_for_random_shapes(tmp_path, inspect_json):
    """The cost model's parameter count (core/cost_model) against num_parameters() of transformers' models."""
    rng = torch.Generator().manual_seed(5)
    pick = lambda *xs: xs[int(torch.randint(len(xs), (1,), generator=rng))]
    for i in range(6):
        heads = pick(2, 4, 8)
        config = transformers.LlamaConfig(vocab_size=pick(50, 128), hidden_size=pick(32, 64), num_hidden_layers=pick(1, 2),
                                          num_attention_heads=heads, num_key_value_heads=pick(*[k for k in (1, 2, 4) if heads % k == 0]),
                                          head_dim=pick(4, 8, 16), intermediate_size=pick(24, 40),
                                          tie_word_embeddings=bool(i % 2), attention_bias=bool(i % 3 == 0), mlp_bias=bool(i % 4 == 1))
        model = transformers.LlamaForCausalLM(config)
        model.save_pretrained(tmp_path / f"llama{i}")
        assert inspect_json(tmp_path / f"llama{i}")["config_parameters"] == model.num_parameters(), config
    for i, cls in enumerate([transformers.ViTModel, transformers.ViTForImageClassification]):
        config = transformers.ViTConfig(image_size=32, patch_size=pick(4, 8), hidden_size=24, num_hidden_layers=2,
                                        num_attention_heads=pick(2, 3), intermediate_size=40, num_labels=3,
                                        qkv_bias=bool(i))
        model = cls(config)
        model.save_pretrained(tmp_path / f"vit{i}")
        assert inspect_json(tmp_path / f"vit{i}")["config_parameters"] == model.num_parameters(), (cls, config)


def test_pickle_only_checkpoint_is_refused(tmp_path, cli):
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    state = transformers.LlamaForCausalLM.from_pretrained(tmp_path).state_dict()
    os.remove(tmp_path / "model.safetensors")
    torch.save(state, tmp_path / "pytorch_model.bin")
    p = cli("inspect", tmp_path, check=False)
    assert p.returncode == 1
    assert "CheckpointError" in p.stderr and "pytorch_model.bin" in p.stderr and "safetensors" in p.stderr
