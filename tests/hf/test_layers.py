"""Layer gates (depth pruning) end to end on tiny transformers models: a dropped block's keys are gone and
the rest renumbered, num_hidden_layers and the per-layer lists of config.json (Qwen2's layer_types) follow,
the export loads in transformers with no missing or unexpected keys and equals the hard-gated student
(verify, fp32 <= 1e-4) and transformers' own dense model with those blocks removed, and generate() works;
LLaMA family, ViT and BERT. Also: resume mid-training gives identical layer gates, and a decode budget
whose per-layer cost dominates spends the budget on depth.
"""
import json
import os
import re

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
h5py = pytest.importorskip("h5py")

VOCAB, SEQ = 256, 16
REQUEUE = 75


def write_config(tmp_path, model, data, run, fmt="tokens_bin", extra="", steps=12):
    seq = f"seq_len = {SEQ}" if fmt != "images_h5" else ""
    p = tmp_path / f"{run}.toml"
    p.write_text(f"""
[run]
dir = "{tmp_path / run}"
threads_per_rank = 1
seed = 5
[model]
path = "{model}"
dtype = "fp32"
[data]
format = "{fmt}"
path = "{data}"
{seq}
[teacher]
cache_root = "{tmp_path / 'cache'}"
top_k = 32
[train]
steps = {steps}
warmup = 4
micro_batch = 4
holdout = 8
importance_batches = 4
checkpoint_every = 5
[search]
ffn_multiple = 16
hidden_multiple = 16
probe_shapes = 3
probe_steps = 2
probe_samples = 4
{extra}
""")
    return p


def tokens(path, samples, seed=0):
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=samples * SEQ).astype(np.uint16)
    ids.tofile(path)
    return torch.from_numpy(ids.astype(np.int64).reshape(samples, SEQ))


def load_checked(cls, path, **kwargs):
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def layer_indices(export, pattern):
    names = set()
    for f in os.listdir(export):
        if f.endswith(".safetensors"):
            names |= set(load_file(export / f).keys())
    return names, sorted({int(m.group(1)) for n in names if (m := re.match(pattern, n))})


def our_forward(cli, model_dir, tmp_path, inputs, output="logits"):
    save_file(inputs, tmp_path / "in.safetensors")
    cli("forward", model_dir, "--inputs", tmp_path / "in.safetensors", "--output", tmp_path / "out.safetensors",
        "--threads", "1")
    return load_file(tmp_path / "out.safetensors")[output]


def verified(run_dir):
    summary = json.load(open(run_dir / "export" / "summary.json"))
    v = summary["verify"]
    assert v["passed"] and v["relative_l2"] <= 1e-4, v
    return summary


# Per-layer cost dominates (a decode step at batch 1 with a large fixed cost per block): the budget is
# met by dropping blocks, which the layer gates choose.
DECODE_BUDGET = """
[budget]
metric = "latency"
latency_mode = "decode"
decode_context = 16
layer_overhead_s = 1e-3
target = 0.55
"""


def test_qwen2_dropped_blocks_equal_transformers_without_them(tmp_path, mpirun, cli):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=5,
                                      num_attention_heads=8, num_key_value_heads=2, initializer_range=0.2,
                                      tie_word_embeddings=True, use_sliding_window=False)
    dense = transformers.Qwen2ForCausalLM(config).eval()
    dense.save_pretrained(tmp_path / "qwen2")
    ids = tokens(tmp_path / "tokens.bin", 64)
    # Layer gates alone, no calibration (no scales, no span refit): the export must be the dense model minus the
    # dropped blocks.
    cfg = write_config(tmp_path, tmp_path / "qwen2", tmp_path / "tokens.bin", "run", extra=DECODE_BUDGET + """
[gates]
heads = false
ffn = false
layers = true
[calibrate]
steps = 0
refit_spans = false
""")
    p = mpirun(2, cfg)
    plan = json.load(open(tmp_path / "run" / "plan" / "plan.json"))
    kept = plan["kept_layers"]
    assert plan["shape"]["layers"] == len(kept) and 1 <= len(kept) <= 3 and plan["shape"]["cost_ratio"] <= 0.55
    assert "rounding_search: layers " in p.stderr
    gates = load_numpy(tmp_path / "run" / "train" / "gates.safetensors")
    assert gates["layers.log_alpha"].shape == (5,) and gates["layers.activation"].shape == (5,)
    assert (gates["layers.fisher"] > 0).all() and (gates["layers.activation"] > 0).all()

    export = tmp_path / "run" / "export" / "slim"
    c = json.load(open(export / "config.json"))
    assert c["num_hidden_layers"] == len(kept) and isinstance(c["num_hidden_layers"], int)
    assert c["layer_types"] == ["full_attention"] * len(kept)
    assert c["tie_word_embeddings"] is True
    names, layers = layer_indices(export, r"model\.layers\.(\d+)\.")
    assert layers == list(range(len(kept))), layers
    # Renumbered: the export's block k is the dense block kept[k], bit for bit.
    dense_w = load_file(tmp_path / "qwen2" / "model.safetensors")
    exported = load_file(export / "model.safetensors")
    for k, l in enumerate(kept):
        a = exported[f"model.layers.{k}.mlp.down_proj.weight"]
        assert torch.equal(a, dense_w[f"model.layers.{l}.mlp.down_proj.weight"]), (k, l)

    model = load_checked(transformers.AutoModelForCausalLM, export)
    assert model.model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()
    # The independent reference: transformers' dense model with the dropped blocks removed.
    ref = transformers.Qwen2ForCausalLM(config).eval()
    ref.load_state_dict(dense.state_dict())
    ref.model.layers = torch.nn.ModuleList([ref.model.layers[l] for l in kept])
    for i, layer in enumerate(ref.model.layers):
        layer.self_attn.layer_idx = i
    ref.config.num_hidden_layers = len(kept)
    ref.config.layer_types = ["full_attention"] * len(kept)
    x = ids[-8:]
    with torch.no_grad():
        theirs = model(input_ids=x).logits
        want = ref(input_ids=x, use_cache=False).logits
    rel = ((theirs - want).abs().max() / want.abs().max()).item()
    assert rel <= 1e-5, rel
    ours = our_forward(cli, export, tmp_path, {"input_ids": x})
    assert ((theirs - ours).abs().max() / theirs.abs().max()).item() <= 1e-4
    verified(tmp_path / "run")
    # generate() with the KV cache works and agrees with the reference's greedy tokens.
    out = model.generate(x[:1, :8], max_new_tokens=8, do_sample=False, pad_token_id=0)
    out_ref = ref.generate(x[:1, :8], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 16) and torch.equal(out, out_ref)


def test_llama_depth_and_width_together_then_healed(tmp_path, mpirun, cli):
    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=2, initializer_range=0.2,
                                      tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    ids = tokens(tmp_path / "tokens.bin", 64, seed=1)
    cfg = write_config(tmp_path, tmp_path / "llama", tmp_path / "tokens.bin", "run", extra=DECODE_BUDGET.replace(
        "0.55", "0.6") + """
[gates]
hidden = true
layers = true
[calibrate]
steps = 4
[heal]
steps = 3
warmup = 1
""")
    mpirun(2, cfg)
    plan = json.load(open(tmp_path / "run" / "plan" / "plan.json"))
    shape = plan["shape"]
    assert shape["layers"] < 4 and len(plan["kept_layers"]) == shape["layers"]
    export = tmp_path / "run" / "export" / "slim"
    names, layers = layer_indices(export, r"model\.layers\.(\d+)\.")
    assert layers == list(range(shape["layers"]))
    assert "lm_head.weight" in names
    model = load_checked(transformers.AutoModelForCausalLM, export)
    assert model.config.num_hidden_layers == shape["layers"]
    x = ids[-8:]
    with torch.no_grad():
        theirs = model(input_ids=x).logits
    ours = our_forward(cli, export, tmp_path, {"input_ids": x})
    assert ((theirs - ours).abs().max() / theirs.abs().max()).item() <= 1e-4
    summary = verified(tmp_path / "run")
    assert summary["shape"]["num_hidden_layers"] == shape["layers"]
    # The healed weights are the export's, under the renumbered names.
    healed = load_file(tmp_path / "run" / "heal" / "weights.safetensors")
    assert set(healed) == names
    exported = {}
    for f in os.listdir(export):
        if f.endswith(".safetensors"):
            exported.update(load_file(export / f))
    assert all(torch.equal(exported[n], healed[n].to(exported[n].dtype)) for n in names)
    assert model.generate(x[:1, :4], max_new_tokens=4, do_sample=False, pad_token_id=0).shape == (1, 8)
    card = (export / "README.md").read_text()
    assert f"| num_hidden_layers | 4 | {shape['layers']} |" in card and "whole blocks" in card
    # evaluate measured generate() in our runtime: prefill of the held-out tokens, 64 decode steps.
    g = summary["evaluate"]["generation"]
    assert g["prompt_tokens"] == 8 * SEQ and g["new_tokens"] == 64, g
    assert g["dense_decode_tokens_per_s"] > 0 and g["export_decode_tokens_per_s"] > 0 and g["prefill_speedup"] > 0
    assert "Generation (batch 1, greedy, KV cache" in card
    assert str(tmp_path) not in card.split("## Reproduce")[0], "the card names data by file name"
    assert 'base_model: "llama"' in card


def test_vit_and_bert_drop_blocks(tmp_path, mpirun, cli):
    torch.manual_seed(2)
    vit_config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                        intermediate_size=96, image_size=16, patch_size=8, num_labels=5)
    transformers.ViTForImageClassification(vit_config).save_pretrained(tmp_path / "vit")
    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["pixel_values"] = np.random.default_rng(0).normal(size=(40, 3, 16, 16)).astype(np.float32)
    only_layers = """
[gates]
heads = false
ffn = false
layers = true
[budget]
target = 0.6
"""
    mpirun(2, write_config(tmp_path, tmp_path / "vit", tmp_path / "img.h5", "vit-run", fmt="images_h5",
                           extra=only_layers))
    export = tmp_path / "vit-run" / "export" / "slim"
    kept = json.load(open(tmp_path / "vit-run" / "plan" / "plan.json"))["kept_layers"]
    assert len(kept) < 4
    _, layers = layer_indices(export, r"vit\.encoder\.layer\.(\d+)\.")
    assert layers == list(range(len(kept)))
    model = load_checked(transformers.AutoModelForImageClassification, export)
    assert model.config.num_hidden_layers == len(kept)
    px = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():
        theirs = model(pixel_values=px).logits
    ours = our_forward(cli, export, tmp_path, {"pixel_values": px})
    assert ((theirs - ours).abs().max() / theirs.abs().max()).item() <= 1e-4
    verified(tmp_path / "vit-run")

    bert_config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                          intermediate_size=96, max_position_embeddings=64, initializer_range=0.1)
    transformers.BertModel(bert_config, add_pooling_layer=False).save_pretrained(tmp_path / "bert")
    rng = np.random.default_rng(3)
    ids = np.zeros((48, SEQ), np.int32)
    mask = np.zeros((48, SEQ), np.int32)
    for i in range(48):
        n = int(rng.integers(5, SEQ + 1))
        ids[i, :n] = rng.integers(1, VOCAB, size=n)
        mask[i, :n] = 1
    with h5py.File(tmp_path / "sentences.h5", "w") as f:
        f["input_ids"] = ids
        f["attention_mask"] = mask
    mpirun(2, write_config(tmp_path, tmp_path / "bert", tmp_path / "sentences.h5", "bert-run", fmt="tokens_h5",
                           extra=only_layers))
    export = tmp_path / "bert-run" / "export" / "slim"
    kept = json.load(open(tmp_path / "bert-run" / "plan" / "plan.json"))["kept_layers"]
    assert len(kept) < 4
    _, layers = layer_indices(export, r"encoder\.layer\.(\d+)\.")
    assert layers == list(range(len(kept)))
    model = load_checked(transformers.BertModel, export, add_pooling_layer=False)
    x, m = torch.from_numpy(ids[-8:].astype(np.int64)), torch.from_numpy(mask[-8:].astype(np.int64))
    with torch.no_grad():
        theirs = model(input_ids=x, attention_mask=m).last_hidden_state
    ours = our_forward(cli, export, tmp_path, {"input_ids": x, "attention_mask": m}, "last_hidden_state")
    keep = m.bool()
    assert ((theirs - ours)[keep].abs().max() / theirs[keep].abs().max()).item() <= 1e-4
    verified(tmp_path / "bert-run")


def test_layer_gates_resume_bit_identical_after_sigterm(tmp_path, mpirun):
    torch.manual_seed(3)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokens(tmp_path / "tokens.bin", 48)
    stages = ("--stages", "teacher_cache,train_gates,reduce_gates")
    extra = "[gates]\nlayers = true\n[budget]\ntarget = 0.6\n"
    ref = write_config(tmp_path, tmp_path / "llama", tmp_path / "tokens.bin", "ref", extra=extra, steps=14)
    mpirun(2, ref, *stages)
    termed = write_config(tmp_path, tmp_path / "llama", tmp_path / "tokens.bin", "termed", extra=extra, steps=14)
    p = mpirun(2, termed, *stages, env={"HAWADA_FAULT": "train_gates.after_step_7@1:term"}, check=False)
    assert p.returncode == REQUEUE, p.stderr
    p = mpirun(2, termed, *stages)
    assert "resumed from step 7" in p.stderr
    a = load_numpy(tmp_path / "ref" / "train" / "gates.safetensors")
    b = load_numpy(tmp_path / "termed" / "train" / "gates.safetensors")
    assert "layers.log_alpha" in a and a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    metrics = [json.loads(l) for l in open(tmp_path / "ref" / "train" / "metrics.jsonl")]
    assert all(0 < m["kept_layers"] <= 1 for m in metrics)


def test_layer_gates_on_a_single_layer_model_are_a_config_error(tmp_path, mpirun):
    torch.manual_seed(4)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokens(tmp_path / "tokens.bin", 24)
    cfg = write_config(tmp_path, tmp_path / "llama", tmp_path / "tokens.bin", "run", extra="[gates]\nlayers = true\n")
    p = mpirun(1, cfg, check=False)
    assert p.returncode == 2, p.stderr
    assert "gates.layers = true needs at least 2 layers" in p.stderr
    assert not (tmp_path / "cache").exists(), "refused before the teacher cache"


def test_budget_only_depth_can_meet_needs_layer_gates(tmp_path, mpirun):
    """Per-layer cost dominates: without layer gates no width reaches the target (a ConfigError naming
    budget.target before any training step); with them, the same budget is met (the twin is
    test_qwen2_dropped_blocks_equal_transformers_without_them)."""
    torch.manual_seed(5)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokens(tmp_path / "tokens.bin", 32)
    cfg = write_config(tmp_path, tmp_path / "llama", tmp_path / "tokens.bin", "run", extra=DECODE_BUDGET)
    p = mpirun(1, cfg, check=False)
    assert p.returncode == 2, p.stderr
    assert "budget.target = 0.5500 is below what the gates can reach" in p.stderr
    assert "budget.layer_overhead_s per layer" in p.stderr
    assert not (tmp_path / "run" / "train" / "metrics.jsonl").exists()


def test_profiled_decode_table_drives_a_decode_search(tmp_path, mpirun, cli):
    """`profile --decode C` times decode steps against a KV cache of C tokens; a decode budget searches with
    it, layer counts included. Its twin: a prefill table under a decode budget is refused by name."""
    torch.manual_seed(6)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokens(tmp_path / "tokens.bin", 32)
    cli("profile", tmp_path / "llama", "--out", tmp_path / "decode.json", "--decode", 16, "--ffn-multiple", 16,
        "--repeats", 1)
    t = json.load(open(tmp_path / "decode.json"))
    assert t["tokens"] == 1 and t["context"] == 16 and all(e["seconds"] > 0 for e in t["attention"] + t["mlp"])
    budget = DECODE_BUDGET.replace("layer_overhead_s = 1e-3\n", "").replace("target = 0.55", "target = 0.9")
    stages = ("--stages", "teacher_cache,train_gates,reduce_gates,rounding_search")
    # The [search] section of write_config is reopened by appending keys to it: put the table there.
    cfg = write_config(tmp_path, tmp_path / "llama", tmp_path / "tokens.bin", "run", extra=budget + "[gates]\nlayers = true\n")
    cfg.write_text(cfg.read_text().replace("[search]\n", f'[search]\nlatency_table = "{tmp_path / "decode.json"}"\n'))
    p = mpirun(1, cfg, *stages)
    assert "latencies from" in p.stderr
    plan = json.load(open(tmp_path / "run" / "plan" / "plan.json"))
    assert plan["shape"]["cost_ratio"] <= 0.9 and plan["metric"] == "latency"
    cli("profile", tmp_path / "llama", "--out", tmp_path / "prefill.json", "--tokens", SEQ, "--ffn-multiple", 16,
        "--repeats", 1)
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("decode.json", "prefill.json").replace(f'dir = "{tmp_path / "run"}"',
                                                                               f'dir = "{tmp_path / "bad"}"'))
    p = mpirun(1, bad, *stages, check=False)
    assert p.returncode == 2 and "search.latency_table" in p.stderr and "--decode CONTEXT" in p.stderr, p.stderr
