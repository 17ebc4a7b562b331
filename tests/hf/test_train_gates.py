"""Stages train_gates and reduce_gates through `hawada-pipeline run` on tiny transformers models:
data parallelism (2 ranks = 1 rank with twice the accumulation), resume and SIGTERM (bit-identical
gates), the gate drift check, and a real learning check where the teacher has dead heads and FFN
channels that the gates must find.
"""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 256, 16
REQUEUE = 75
# These tests are about training: the stages after reduce_gates are tested in test_export.py.
STAGES = ("--stages", "teacher_cache,train_gates,reduce_gates")


def make_llama(path, seed=0, dead_heads=None, dead_ffn=None, layers=2, heads=4, kv=2, hidden=32, ffn=64):
    """A random LLaMA; dead_heads[l] / dead_ffn[l] list structures whose output weights are zeroed,
    so they contribute nothing to the logits."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=ffn,
                                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                                      initializer_range=0.3, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    head_dim = hidden // heads
    with torch.no_grad():
        for l, hs in (dead_heads or {}).items():
            for h in hs:
                model.model.layers[l].self_attn.o_proj.weight[:, h * head_dim:(h + 1) * head_dim] = 0
        for l, cs in (dead_ffn or {}).items():
            model.model.layers[l].mlp.down_proj.weight[:, cs] = 0
    model.save_pretrained(path)
    return model


def token_file(path, samples, seed=0):
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=samples * SEQ).astype(np.uint16)
    ids.tofile(path)


def write_config(tmp_path, model, data, run, train="", budget="", gates="", dist=""):
    p = tmp_path / f"{run}.toml"
    p.write_text(f"""
[run]
dir = "{tmp_path / run}"
threads_per_rank = 1
seed = 3
[model]
path = "{model}"
dtype = "fp32"
[data]
format = "tokens_bin"
path = "{data}"
seq_len = {SEQ}
[teacher]
cache_root = "{tmp_path / 'cache'}"
top_k = 32
[gates]
{gates}
[train]
{train_section(train)}
[budget]
{budget or "target = 0.7"}
[dist]
{dist}
""")
    return p


def train_section(train):
    """`train` plus defaults for the keys it does not set."""
    for key, default in (("warmup", "4"), ("holdout", "8")):
        if key not in train:
            train += f"\n{key} = {default}"
    return train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    make_llama(d / "llama")
    token_file(d / "tokens.bin", 72)
    return d


def gates_of(run_dir):
    return load_file(os.path.join(run_dir, "train", "gates.safetensors"))


def metrics_of(run_dir):
    return [json.loads(l) for l in open(os.path.join(run_dir, "train", "metrics.jsonl"))]


def test_two_ranks_equal_one_rank_with_twice_the_accumulation(setup, mpirun):
    d = setup
    one = write_config(d, d / "llama", d / "tokens.bin", "acc2", train="steps = 12\nmicro_batch = 2\ngrad_accum = 2")
    two = write_config(d, d / "llama", d / "tokens.bin", "np2", train="steps = 12\nmicro_batch = 2\ngrad_accum = 1")
    mpirun(1, one, *STAGES)
    mpirun(2, two, *STAGES)
    a, b = gates_of(d / "acc2"), gates_of(d / "np2")
    assert a.keys() == b.keys() == {"heads.log_alpha", "ffn.log_alpha", "heads.activation", "heads.fisher",
                                    "ffn.activation", "ffn.fisher"}
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)
    ma, mb = metrics_of(d / "acc2"), metrics_of(d / "np2")
    assert [m["step"] for m in ma] == list(range(1, 13))
    np.testing.assert_allclose([m["kl"] for m in ma], [m["kl"] for m in mb], rtol=1e-5)
    # The gates moved: this is not two copies of the initial state.
    assert np.abs(a["ffn.log_alpha"] - a["ffn.log_alpha"].flat[0]).max() > 1e-3
    # Runner flags: everything is reused; --force and --from rerun what they name; bad names are usage errors.
    dry = mpirun(1, one, *STAGES, "--dry-run").stderr
    for stage in ("teacher_cache", "train_gates", "reduce_gates"):
        assert f"{stage}: reuse (marker matches" in dry, dry
    dry = mpirun(1, one, *STAGES, "--dry-run", "--from", "train_gates").stderr
    assert "teacher_cache: reuse" in dry and "train_gates: run (forced)" in dry and "reduce_gates: run (forced)" in dry
    again = mpirun(1, one, *STAGES, "--force", "reduce_gates").stderr
    assert "train_gates: skipped" in again and "reduce_gates: done" in again
    bad = mpirun(1, one, *STAGES, "--stages", "train_gates,bogus", check=False)
    assert bad.returncode == 2 and "unknown stage 'bogus'" in bad.stderr and "reduce_gates" in bad.stderr
    # reduce_gates wrote scores, the same on every rank count.
    scores = load_file(os.path.join(d / "np2", "gates", "scores.safetensors"))
    assert scores["heads.score"].shape == (2, 4) and scores["ffn.importance"].shape == (2, 64)


def test_resume_after_kill_and_sigterm_give_identical_gates(setup, mpirun):
    d = setup
    train = "steps = 20\nmicro_batch = 2\ncheckpoint_every = 5"
    ref = write_config(d, d / "llama", d / "tokens.bin", "ref", train=train)
    mpirun(2, ref, *STAGES)
    expected = gates_of(d / "ref")

    # Killed (SIGKILL) after step 12: the rerun resumes from the step-10 checkpoint.
    killed = write_config(d, d / "llama", d / "tokens.bin", "killed", train=train)
    p = mpirun(2, killed, *STAGES, env={"HAWADA_FAULT": "train_gates.after_step_12@1:kill"}, check=False)
    assert p.returncode != 0
    assert os.listdir(d / "killed" / "train" / "checkpoints") == ["step-00000010"]
    p = mpirun(2, killed, *STAGES)
    assert "resumed from step 10" in p.stderr
    got = gates_of(d / "killed")
    for k in expected:
        assert np.array_equal(got[k], expected[k]), k
    assert [m["step"] for m in metrics_of(d / "killed")] == list(range(1, 21))

    # SIGTERM after step 7 on one rank: every rank checkpoints step 7 and exits with the requeue code.
    termed = write_config(d, d / "llama", d / "tokens.bin", "termed", train=train)
    p = mpirun(2, termed, *STAGES, env={"HAWADA_FAULT": "train_gates.after_step_7@1:term"}, check=False)
    assert p.returncode == REQUEUE, p.stderr
    assert "SIGTERM: checkpointed step 7" in p.stderr
    assert os.path.isdir(d / "termed" / "train" / "checkpoints" / "step-00000007")
    assert not (d / "termed" / "stages" / "train_gates.done").exists()
    p = mpirun(2, termed, *STAGES)
    assert "resumed from step 7" in p.stderr
    got = gates_of(d / "termed")
    for k in expected:
        assert np.array_equal(got[k], expected[k]), k


def test_gate_drift_across_ranks_is_a_comm_error(setup, mpirun):
    d = setup
    cfg = write_config(d, d / "llama", d / "tokens.bin", "drift", train="steps = 6\nmicro_batch = 2",
                       dist="check_every = 3")
    p = mpirun(2, cfg, *STAGES, env={"HAWADA_FAULT": "train_gates.perturb_gates@1:flag"}, check=False)
    assert p.returncode != 0
    assert "CommError" in p.stderr and "gate parameters differ across ranks after step 3" in p.stderr


def test_holdout_that_leaves_no_batch_is_a_config_error(setup, mpirun):
    d = setup
    cfg = write_config(d, d / "llama", d / "tokens.bin", "holdout", train="steps = 2\nwarmup = 1\nmicro_batch = 4\nholdout = 70")
    p = mpirun(1, cfg, *STAGES, check=False)
    assert p.returncode == 2 and "train.holdout = 70" in p.stderr


def test_vit_head_gates_bring_hidden_gates(tmp_path, mpirun):
    # A ViT couples heads and hidden: head gates alone train hidden gates too.
    pytest.importorskip("PIL")
    import h5py
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=8, num_labels=3)
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["pixel_values"] = np.random.default_rng(0).normal(size=(24, 3, 16, 16)).astype(np.float32)
    p = tmp_path / "vit.toml"
    p.write_text(f"""
[run]
dir = "{tmp_path / 'run'}"
threads_per_rank = 1
[model]
path = "{tmp_path / 'vit'}"
dtype = "fp32"
[data]
format = "images_h5"
path = "{tmp_path / 'img.h5'}"
[teacher]
cache_root = "{tmp_path / 'cache'}"
[gates]
heads = true
hidden = false
[train]
steps = 2
warmup = 1
micro_batch = 2
holdout = 4
""")
    r = mpirun(1, p, *STAGES)
    assert "couples heads and hidden" in r.stderr
    gates = load_file(os.path.join(tmp_path / "run", "train", "gates.safetensors"))
    assert gates["heads.log_alpha"].shape == (1, 2) and gates["hidden.log_alpha"].shape == (32,)
    assert gates["ffn.log_alpha"].shape == (1, 64)


def test_gates_find_the_dead_heads_and_ffn_channels(tmp_path, mpirun):
    """The teacher has heads and FFN channels whose output weights are zero. With a parameter budget
    that removes exactly that many, the evaluation gates drop exactly those."""
    dead_heads = {0: [1], 1: [2]}
    dead_ffn = {0: list(range(0, 64, 4)), 1: list(range(1, 64, 4))}  # 16 of 64 channels per layer
    make_llama(tmp_path / "llama", seed=1, dead_heads=dead_heads, dead_ffn=dead_ffn)
    token_file(tmp_path / "tokens.bin", 136, seed=1)
    # Parameters removed: per dead head q rows and o columns (2 * hidden * head_dim), per dead FFN
    # channel gate/up rows and down column (3 * hidden).
    hidden, head_dim = 32, 8
    total = sum(p.numel() for p in transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llama").parameters())
    removed = 2 * (2 * hidden * head_dim) + 32 * 3 * hidden
    target = (total - removed) / total
    cfg = write_config(tmp_path, tmp_path / "llama", tmp_path / "tokens.bin", "learn",
                       train="steps = 150\nmicro_batch = 4\nwarmup = 50\nlr = 0.1",
                       budget=f"metric = \"params\"\ntarget = {target!r}")
    p = mpirun(2, cfg, *STAGES)
    scores = load_file(os.path.join(tmp_path / "learn", "gates", "scores.safetensors"))
    heads, ffn = scores["heads.evaluation"], scores["ffn.evaluation"]
    for l in range(2):
        assert sorted(np.flatnonzero(heads[l] == 0).tolist()) == dead_heads[l], (l, heads[l])
        assert sorted(np.flatnonzero(ffn[l] == 0).tolist()) == dead_ffn[l], (l, ffn[l])
    # The deterministic gates meet the budget within 2%.
    line = [l for l in p.stderr.splitlines() if "the evaluation gates cost" in l][0]
    assert "target" in line
    cost = float(line.split("the evaluation gates cost ")[1].split()[0])
    assert abs(cost / target - 1) <= 0.02, line
