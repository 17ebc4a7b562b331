"""The sampled teacher cache (teacher.logits = "sampled"): tokens drawn from the teacher's distribution,
stored as distinct ids (3 bytes) with counts and the entropy, at <= 64 bytes a token; checked with h5py
against transformers' logits (the entropy, and the drawn tokens' mean log-probability, which is -H in
expectation), identical across 1 and 2 ranks and across reruns, trained on by train_gates, and a corrupted
or truncated chunk is refused by name, never trained on.
"""
import glob
import json
import os
import re

import h5py
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB, SEQ, SAMPLES, DRAWS = 300, 64, 150, 12
STAGES = ("--stages", "teacher_cache,train_gates")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sampled")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(d / "llama")
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(SAMPLES, SEQ)).astype(np.int32)
    with h5py.File(d / "tokens.h5", "w") as f:
        f["input_ids"] = ids
    return d, model, ids


def write_config(d, run, cache, extra=""):
    p = d / f"{run}.toml"
    p.write_text(f"""
[run]
dir = "{d / run}"
threads_per_rank = 1
[model]
path = "{d / 'llama'}"
dtype = "fp32"
[data]
path = "{d / 'tokens.h5'}"
seq_len = {SEQ}
[teacher]
cache_root = "{cache}"
logits = "sampled"
samples = {DRAWS}
seed = 7
batch_size = 5
[train]
steps = 4
warmup = 2
micro_batch = 4
holdout = 8
importance_batches = 2
{extra}
[budget]
target = 0.8
""")
    return p


def chunks(cache):
    (directory,) = glob.glob(str(cache / "*" / "index.json"))
    return sorted(glob.glob(os.path.join(os.path.dirname(directory), "chunk-*.h5")))


def read(files):
    out = {"ids": [], "counts": [], "entropy": []}
    for f in files:
        with h5py.File(f, "r") as h:
            b = h["sampled_ids"][...].astype(np.int64)
            out["ids"].append(b[..., 0] + 256 * b[..., 1] + 65536 * b[..., 2])
            out["counts"].append(h["sampled_counts"][...])
            out["entropy"].append(h["entropy"][...])
    return {k: np.concatenate(v) for k, v in out.items()}


def test_sampled_cache_against_transformers_ranks_and_reruns(setup, mpirun):
    d, model, ids = setup
    p = mpirun(1, write_config(d, "one", d / "cache1"), *STAGES)
    m = re.search(r"([0-9.]+) bytes per token on disk", p.stderr)
    assert m and float(m.group(1)) <= 64, p.stderr
    two = mpirun(2, write_config(d, "two", d / "cache2"), *STAGES)
    a, b = read(chunks(d / "cache1")), read(chunks(d / "cache2"))
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs between 1 and 2 ranks"
    index = json.load(open(glob.glob(str(d / "cache1" / "*" / "index.json"))[0]))
    assert index["kind"] == "lm-sampled" and index["draws"] == DRAWS
    assert (a["counts"].sum(-1) == DRAWS).all() and a["ids"].max() < VOCAB

    # Against transformers: the entropy of each position, and the drawn tokens' mean log-probability,
    # whose expectation is -H (a test of the draws' distribution over 115,200 draws).
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.double()
    logp = torch.log_softmax(logits, -1)
    h = -(logp.exp() * logp).sum(-1).numpy()
    assert np.abs(a["entropy"] - h).max() <= 1e-3
    drawn = torch.from_numpy(a["ids"])
    w = torch.from_numpy(a["counts"].astype(np.float64))
    mean_logp = (logp.gather(-1, drawn) * w).sum() / w.sum()
    assert abs(mean_logp.item() + h.mean()) <= 0.02, (mean_logp.item(), h.mean())

    # Another run reuses the cache; train_gates trained on it.
    again = mpirun(1, write_config(d, "again", d / "cache1"), "--stages", "teacher_cache")
    assert "reused the complete cache" in again.stderr
    metrics = [json.loads(l) for l in open(d / "one" / "train" / "metrics.jsonl")]
    assert len(metrics) == 4 and all(np.isfinite(x["kl"]) for x in metrics)


def test_corrupted_or_truncated_chunk_is_refused(setup, mpirun):
    d, _, _ = setup
    mpirun(1, write_config(d, "c", d / "cache3"), "--stages", "teacher_cache")
    files = chunks(d / "cache3")
    with h5py.File(files[1], "r+") as h:  # samples 64-127: one bit of one token id of each
        v = h["sampled_ids"][:, 3, 0, 0]
        h["sampled_ids"][:, 3, 0, 0] = v ^ 1
    p = mpirun(1, write_config(d, "c", d / "cache3"), *STAGES, "--force", "train_gates", check=False)
    assert p.returncode == 1, p.stderr
    assert re.search(r"the stored bytes of sample (6[4-9]|[7-9]\d|1[01]\d|12[0-7]) fail their checksum", p.stderr), p.stderr
    assert os.path.basename(files[1]) in p.stderr
    # The run stops at the first read of the chunk: no step ever used its rows, and the stage never finished.
    assert not (d / "c" / "stages" / "train_gates.done").exists()
    # Truncated: the rerun refuses it by name too; deleting it lets teacher_cache recompute it.
    with open(files[2], "r+b") as f:
        f.truncate(os.path.getsize(files[2]) // 2)
    os.remove(files[1])
    p = mpirun(1, write_config(d, "c", d / "cache3"), "--stages", "teacher_cache", "--force", "teacher_cache",
               check=False)
    assert p.returncode == 1 and os.path.basename(files[2]) in p.stderr, p.stderr
    os.remove(files[2])
    mpirun(1, write_config(d, "c", d / "cache3"), "--stages", "teacher_cache", "--force", "teacher_cache")
    assert len(chunks(d / "cache3")) == 3


def test_sampled_cache_needs_temperature_one(setup, mpirun):
    d, _, _ = setup
    p = mpirun(1, write_config(d, "t", d / "cache4", extra="kd_temperature = 2.0"), check=False)
    assert p.returncode == 2 and "train.kd_temperature" in p.stderr and "must be 1" in p.stderr, p.stderr
