"""Stages rounding_search and export end to end on tiny transformers models (LLaMA with GQA and
tied embeddings, with hidden-channel pruning; a ViT classifier): the exported directory loads in
transformers with no missing, unexpected or mismatched keys, transformers' logits equal our forward
of the export, and the export equals the hard-gated student (verify). Also: the plan is legal and
within budget, an unreachable budget names the smallest reachable cost, and a killed export
leaves nothing under the final name and reruns cleanly.
"""
import csv
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 256, 16


def make_llama(path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=2, initializer_range=0.2,
                                      tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(path)


def make_vit(path):
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                                    image_size=16, patch_size=8, num_labels=5)
    transformers.ViTForImageClassification(config).save_pretrained(path)


def write_config(tmp_path, model, data, fmt, run, extra):
    p = tmp_path / f"{run}.toml"
    seq = f"seq_len = {SEQ}\n" if fmt != "images_h5" else ""
    p.write_text(f"""
[run]
dir = "{tmp_path / run}"
threads_per_rank = 1
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
steps = 20
warmup = 5
micro_batch = 4
holdout = 8
{extra}
""")
    return p


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, mpirun):
    d = tmp_path_factory.mktemp("llama")
    make_llama(d / "llama")
    np.random.default_rng(0).integers(0, VOCAB, size=64 * SEQ).astype(np.uint16).tofile(d / "tokens.bin")
    cfg = write_config(d, d / "llama", d / "tokens.bin", "tokens_bin", "run", """
[gates]
hidden = true
[budget]
target = 0.55
[search]
ffn_multiple = 16
hidden_multiple = 16
[export]
max_shard_size = 40000
""")
    p = mpirun(2, cfg)
    return d, cfg, p


def load_checked(cls, path):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def our_forward(cli, model_dir, tmp_path, inputs):
    save_file(inputs, tmp_path / "in.safetensors")
    cli("forward", model_dir, "--inputs", tmp_path / "in.safetensors", "--output", tmp_path / "out.safetensors",
        "--threads", "1")
    return load_file(tmp_path / "out.safetensors")["logits"]


def test_llama_export_loads_and_matches(llama_run, cli, tmp_path):
    d, _, p = llama_run
    export = d / "run" / "export" / "slim"
    plan = json.load(open(d / "run" / "plan" / "plan.json"))
    shape = plan["shape"]
    # Legal for transformers and within budget.
    assert shape["hidden_size"] % shape["num_attention_heads"] == 0
    assert shape["num_attention_heads"] % shape["num_key_value_heads"] == 0 and shape["head_dim"] == 8
    assert shape["cost_ratio"] <= 0.55 and shape["intermediate_size"] % 16 == 0 and shape["hidden_size"] % 16 == 0
    assert shape["hidden_size"] < 64, "hidden channels were pruned (the budget needs it)"
    for layer in plan["layers"]:
        per = shape["num_attention_heads"] // shape["num_key_value_heads"]
        groups = [h // 4 for h in layer["heads"]]  # dense: 4 query heads per kv head
        assert groups == sorted(groups) and all(groups.count(g) == per for g in set(groups))
        assert sorted(set(groups)) == layer["kv_heads"]
    rows = list(csv.DictReader(open(d / "run" / "plan" / "candidates.csv")))
    assert sum(int(r["chosen"]) for r in rows) == 1
    costs = [float(r["cost_ratio"]) for r in rows]
    assert costs == sorted(costs)

    # Sharded, config written explicitly, tied embeddings stay tied.
    files = sorted(os.listdir(export))
    assert "model.safetensors.index.json" in files and "model-00001-of-" in " ".join(files)
    cfg = json.load(open(export / "config.json"))
    assert cfg["num_attention_heads"] == shape["num_attention_heads"] and cfg["head_dim"] == 8
    assert cfg["tie_word_embeddings"] is True and cfg["dtype"] == cfg["torch_dtype"] == "float32"
    assert isinstance(cfg["hidden_size"], int)

    model = load_checked(transformers.AutoModelForCausalLM, export)
    assert model.model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()
    ids = torch.from_numpy(np.fromfile(d / "tokens.bin", dtype=np.uint16).astype(np.int64).reshape(-1, SEQ)[-8:])
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    ours = our_forward(cli, export, tmp_path, {"input_ids": ids})
    rel = (theirs - ours).abs().max() / theirs.abs().max()
    assert rel <= 1e-4, rel
    summary = json.load(open(d / "run" / "export" / "summary.json"))
    assert summary["verify"]["passed"] and summary["verify"]["held_out"] and summary["verify"]["relative_l2"] <= 1e-4
    assert "export: verify on 8 held-out samples" in p.stderr


def test_vit_export_loads_and_matches(tmp_path, mpirun, cli):
    import h5py
    make_vit(tmp_path / "vit")
    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["pixel_values"] = np.random.default_rng(0).normal(size=(40, 3, 16, 16)).astype(np.float32)
    cfg = write_config(tmp_path, tmp_path / "vit", tmp_path / "img.h5", "images_h5", "run", """
[budget]
target = 0.6
[search]
ffn_multiple = 16
hidden_multiple = 16
""")
    mpirun(2, cfg)
    export = tmp_path / "run" / "export" / "slim"
    c = json.load(open(export / "config.json"))
    assert c["hidden_size"] == c["num_attention_heads"] * 16 and c["hidden_size"] < 64
    model = load_checked(transformers.AutoModelForImageClassification, export)
    px = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():
        theirs = model(pixel_values=px).logits
    ours = our_forward(cli, export, tmp_path, {"pixel_values": px})
    assert (theirs - ours).abs().max() / theirs.abs().max() <= 1e-4
    assert json.load(open(tmp_path / "run" / "export" / "summary.json"))["verify"]["passed"]


def test_unreachable_budget_names_the_smallest_cost(llama_run, mpirun):
    d, cfg, _ = llama_run
    text = cfg.read_text().replace("target = 0.55", "target = 0.01")
    bad = d / "tiny-budget.toml"
    bad.write_text(text.replace(f'dir = "{d / "run"}"', f'dir = "{d / "run-tiny"}"'))
    p = mpirun(1, bad, check=False)
    assert p.returncode == 2, p.stderr
    assert "budget.target = 0.0100 (params) is below every legal shape: the smallest reachable cost is" in p.stderr


@pytest.mark.parametrize("point", ["export.after_shard@1", "export.before_publish@0"])
def test_killed_export_leaves_nothing_final_and_reruns(llama_run, mpirun, point):
    d, cfg, _ = llama_run
    run = d / f"run-{point.split('.')[1].split('@')[0]}"
    text = cfg.read_text().replace(f'dir = "{d / "run"}"', f'dir = "{run}"')
    c = d / f"{run.name}.toml"
    c.write_text(text)
    p = mpirun(2, c, env={"HAWADA_FAULT": point + ":kill"}, check=False)
    assert p.returncode != 0
    assert not (run / "export" / "slim").exists()
    p = mpirun(2, c)
    assert "export: verify" in p.stderr
    ref = d / "run" / "export" / "slim"
    for f in os.listdir(ref):
        if f.endswith(".safetensors"):
            assert (ref / f).read_bytes() == (run / "export" / "slim" / f).read_bytes(), f


def test_profiled_latency_table_drives_the_search(llama_run, cli, mpirun):
    d, cfg, _ = llama_run
    table = d / "latency.json"
    p = cli("profile", d / "llama", "--out", table, "--tokens", SEQ, "--ffn-multiple", "16", "--hidden-multiple",
            "16", "--hidden", "--repeats", "1")
    t = json.load(open(table))
    assert t["device"] == "cpu" and t["batch"] == 1 and t["tokens"] == SEQ
    assert {"hidden": 64, "heads": 8, "kv_heads": 2} in [{k: e[k] for k in ("hidden", "heads", "kv_heads")}
                                                        for e in t["attention"]]
    assert all(e["seconds"] > 0 for e in t["attention"] + t["mlp"] + t["other"])
    # The target lies between the fastest shape the table allows and the dense model (timings of this
    # tiny model differ from machine to machine, so a fixed target could be unreachable).
    att = {(e["hidden"], e["heads"], e["kv_heads"]): e["seconds"] for e in t["attention"]}
    mlp_t = {(e["hidden"], e["ffn"]): e["seconds"] for e in t["mlp"]}
    oth = {e["hidden"]: e["seconds"] for e in t["other"]}
    dense_s = 2 * (att[(64, 8, 2)] + mlp_t[(64, 96)]) + oth[64]
    fastest = min(2 * (a + m) + oth[h] for (h, _, _), a in att.items() for (h2, _), m in mlp_t.items() if h2 == h)
    target = round((fastest / dense_s + 1) / 2, 4)
    text = cfg.read_text().replace("target = 0.55", f'metric = "latency"\ntarget = {target}')
    text = text.replace("ffn_multiple = 16", f'ffn_multiple = 16\nlatency_table = "{table}"')
    text = text.replace(f'dir = "{d / "run"}"', f'dir = "{d / "run-table"}"')
    c = d / "table.toml"
    c.write_text(text)
    p = mpirun(1, c, "--stages", "teacher_cache,train_gates,reduce_gates,rounding_search")
    assert f"rounding_search: latencies from {table} (cpu, fp32)" in p.stderr
    plan = json.load(open(d / "run-table" / "plan" / "plan.json"))
    s = plan["shape"]
    measured = {(e["hidden"], e["heads"], e["kv_heads"]): e["seconds"] for e in t["attention"]}
    mlp = {(e["hidden"], e["ffn"]): e["seconds"] for e in t["mlp"]}
    other = {e["hidden"]: e["seconds"] for e in t["other"]}
    expect = 2 * (measured[(s["hidden_size"], s["num_attention_heads"], s["num_key_value_heads"])] +
                  mlp[(s["hidden_size"], s["intermediate_size"])]) + other[s["hidden_size"]]
    assert s["latency_s"] == pytest.approx(expect, rel=1e-9) and s["cost_ratio"] <= target
    # A table measured at another sequence length is refused with both sizes named.
    cli("profile", d / "llama", "--out", d / "latency8.json", "--tokens", "8", "--repeats", "1",
        "--ffn-multiple", "16", "--hidden-multiple", "16", "--hidden")
    c.write_text(text.replace(str(table), str(d / "latency8.json")).replace("run-table", "run-table8"))
    p = mpirun(1, c, check=False)
    assert p.returncode == 2 and "was measured at batch 1 x 8 tokens" in p.stderr and f"1 x {SEQ}" in p.stderr
    # A timing changed on disk (as a flipped bit would) is a CheckpointError naming the table, not a different plan.
    assert len(t["xxh64"]) == 16
    t["attention"][0]["seconds"] *= 2
    flipped = d / "latency-flipped.json"
    flipped.write_text(json.dumps(t))
    c.write_text(text.replace(str(table), str(flipped)))
    p = mpirun(1, c, check=False)
    assert p.returncode != 0 and "CheckpointError" in p.stderr and str(flipped) in p.stderr, p.stderr[-3000:]
    assert "does not match the checksum" in p.stderr
