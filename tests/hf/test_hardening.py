"""Hostile and broken inputs (issue 13): every case ends with a typed error naming the file (exit 1 or 2),
within seconds, under a bounded address space, with nothing published; or with the documented behaviour.
The inputs are made here from a tiny transformers LLaMA.
"""
import json
import os
import resource
import shutil
import struct
import subprocess
import time

import h5py
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

CLI = os.environ.get("HAWADA_CLI", "")
VOCAB, SEQ = 256, 16
LIMIT_BYTES = 6 << 30  # address space of every command (LibTorch maps about 2 GB of libraries)


def run(*args, timeout=60):
    if not CLI or not os.path.exists(CLI):
        pytest.skip("HAWADA_CLI does not point at a built hawada-pipeline")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))

    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, preexec_fn=limit, env=env)
    p.seconds = time.time() - t0
    return p


def expect_error(p, kind, *names, code=None):
    """A typed error (not an internal error or a crash) that names what it must."""
    assert p.returncode in ((code,) if code else (1, 2)), (p.returncode, p.stderr)
    assert f"{kind}:" in p.stderr and "internal error" not in p.stderr, p.stderr
    for n in names:
        assert str(n) in p.stderr, (n, p.stderr)
    assert p.seconds < 30, p.seconds


def make_llama(path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                                      tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    make_llama(d / "llama")
    with h5py.File(d / "tokens.h5", "w") as f:
        f["input_ids"] = np.random.default_rng(0).integers(0, VOCAB, size=(40, SEQ)).astype(np.int32)
    return d


def copy_model(base, d, name):
    shutil.copytree(base / "llama", d / name)
    return d / name


def edit_config(model, **changes):
    c = json.load(open(model / "config.json"))
    c.update(changes)
    json.dump(c, open(model / "config.json", "w"))


def write_run_config(d, model, data, run="run", extra=""):
    p = d / f"{run}.toml"
    p.write_text(f"""
[run]
dir = "{d / run}"
threads_per_rank = 1
[model]
path = "{model}"
dtype = "fp32"
[data]
path = "{data}"
seq_len = {SEQ}
[teacher]
cache_root = "{d / 'cache'}"
top_k = 16
[train]
steps = 2
warmup = 1
micro_batch = 2
holdout = 8
importance_batches = 2
[budget]
target = 0.8
[search]
ffn_multiple = 16
probe_shapes = 0
[calibrate]
steps = 2
{extra}
""")
    return p


def nothing_published(run_dir):
    return not (run_dir / "export" / "slim").exists() and not (run_dir / "stages" / "export.done").exists()


# 1. Non-finite inputs never reach a published model.
def test_nan_weight_is_refused_by_name(base, tmp_path):
    m = copy_model(base, tmp_path, "nan")
    from safetensors.torch import load_file, save_file
    w = load_file(m / "model.safetensors")
    w["model.norm.weight"][3] = float("nan")
    save_file(w, m / "model.safetensors", metadata={"format": "pt"})
    p = run("run", write_run_config(tmp_path, m, base / "tokens.h5"))
    expect_error(p, "CheckpointError", "model.norm.weight", "non-finite")
    assert nothing_published(tmp_path / "run")


def test_rope_theta_zero_is_refused(base, tmp_path):
    m = copy_model(base, tmp_path, "rope")
    edit_config(m, rope_theta=0, rope_parameters={"rope_type": "default", "rope_theta": 0})
    p = run("run", write_run_config(tmp_path, m, base / "tokens.h5"))
    expect_error(p, "CheckpointError", "rope_theta", "config.json")
    assert nothing_published(tmp_path / "run")


def test_nan_in_a_cache_chunk_is_a_cache_error(base, tmp_path):
    cfg = write_run_config(tmp_path, base / "llama", base / "tokens.h5")
    assert run("run", cfg, "--stages", "teacher_cache").returncode == 0
    chunk = sorted((tmp_path / "cache").glob("*/chunk-*.h5"))[0]
    with h5py.File(chunk, "a") as f:
        lse = f["logsumexp"][...]
        lse[:, 5] = np.nan  # one position of every sample: whichever sample training reads
        f["logsumexp"][...] = lse
    p = run("run", cfg)
    expect_error(p, "CacheError", chunk.name, "logsumexp", "fail their checksum")
    # A cache without checksums (written before they existed), or a broken teacher's NaN: the value check.
    with h5py.File(chunk, "a") as f:
        del f["row_xxh64"]
    p = run("run", cfg)
    expect_error(p, "CacheError", chunk.name, "logsumexp", "non-finite")
    assert nothing_published(tmp_path / "run")


# 2. Deep JSON: a typed error, no stack overflow.
def test_deeply_nested_json_is_refused(base, tmp_path):
    m = copy_model(base, tmp_path, "deep")
    text = open(m / "config.json").read().rstrip().rstrip("}") + ', "junk": ' + "[" * 200000 + "]" * 200000 + "}"
    open(m / "config.json", "w").write(text)
    expect_error(run("inspect", m), "CheckpointError", "config.json", "nests deeper")
    # A safetensors header entry 100,000 deep.
    h = copy_model(base, tmp_path, "deep-header")
    header = b'{"x": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    header += b" " * (-len(header) % 8)
    open(h / "model.safetensors", "wb").write(struct.pack("<Q", len(header)) + header)
    expect_error(run("inspect", h), "CheckpointError", "model.safetensors")
    # An index.json weight_map value 100,000 deep.
    i = copy_model(base, tmp_path, "deep-index")
    os.rename(i / "model.safetensors", i / "model-00001-of-00001.safetensors")
    open(i / "model.safetensors.index.json", "w").write(
        '{"metadata": {}, "weight_map": {"a": ' + "[" * 100000 + "]" * 100000 + "}}")
    expect_error(run("inspect", i), "CheckpointError", "model.safetensors.index.json")


# 3. Sizes from files are checked before anything is allocated by them.
@pytest.mark.parametrize("key,value,cmd", [("head_dim", 2000000000, "forward"), ("num_hidden_layers", 300000000, "inspect"),
                                           ("num_hidden_layers", 1000000000, "inspect")])
def test_huge_config_sizes_are_refused(base, tmp_path, key, value, cmd):
    m = copy_model(base, tmp_path, "huge")
    edit_config(m, **{key: value})
    if cmd == "forward":
        from safetensors.torch import save_file
        save_file({"input_ids": torch.zeros(1, 4, dtype=torch.long)}, tmp_path / "in.safetensors")
        p = run("forward", m, "--inputs", tmp_path / "in.safetensors", "--output", tmp_path / "out.safetensors")
    else:
        p = run("inspect", m)
    expect_error(p, "CheckpointError", "config.json", key)


def test_hdf5_declaring_2_to_40_rows_is_refused(base, tmp_path):
    with h5py.File(tmp_path / "huge.h5", "w") as f:
        f.create_dataset("input_ids", shape=(1 << 40, SEQ), dtype=np.int32, chunks=(1, SEQ))
    assert os.path.getsize(tmp_path / "huge.h5") < 100000
    p = run("run", write_run_config(tmp_path, base / "llama", tmp_path / "huge.h5"))
    expect_error(p, "DataError", "huge.h5", "input_ids")


# 4. Data whose bytes live outside the file: refused, not fingerprinted wrongly.
def test_external_storage_and_links_are_refused(base, tmp_path):
    ids = np.random.default_rng(1).integers(0, VOCAB, size=(40, SEQ)).astype(np.int32)
    ids.tofile(tmp_path / "raw.bin")
    with h5py.File(tmp_path / "external.h5", "w") as f:
        f.create_dataset("input_ids", shape=ids.shape, dtype=np.int32, external=[(str(tmp_path / "raw.bin"), 0, ids.nbytes)])
    p = run("run", write_run_config(tmp_path, base / "llama", tmp_path / "external.h5", run="ext"))
    expect_error(p, "DataError", "external.h5", "input_ids", "external")
    with h5py.File(tmp_path / "linked.h5", "w") as f:
        f["input_ids"] = h5py.ExternalLink(str(base / "tokens.h5"), "input_ids")
    p = run("run", write_run_config(tmp_path, base / "llama", tmp_path / "linked.h5", run="lnk"))
    expect_error(p, "DataError", "linked.h5", "input_ids", "external link")
    layout = h5py.VirtualLayout(shape=(40, SEQ), dtype=np.int32)
    layout[:] = h5py.VirtualSource(str(base / "tokens.h5"), "input_ids", shape=(40, SEQ))
    with h5py.File(tmp_path / "virtual.h5", "w") as f:
        f.create_virtual_dataset("input_ids", layout)
    p = run("run", write_run_config(tmp_path, base / "llama", tmp_path / "virtual.h5", run="vds"))
    expect_error(p, "DataError", "virtual.h5", "input_ids", "virtual")


# 5 and 6. Plans that export must not slice: refused with the file named; the verified export stays.
def test_broken_plans_are_refused_and_nothing_is_published(base, tmp_path):
    cfg = write_run_config(tmp_path, base / "llama", base / "tokens.h5")
    assert run("run", cfg, timeout=300).returncode == 0
    export = tmp_path / "run" / "export" / "slim" / "model.safetensors"
    before = export.read_bytes()
    plan_file = tmp_path / "run" / "plan" / "plan.json"
    good = json.load(open(plan_file))
    for what, edit, says in (
            ("duplicate", lambda l: l.__setitem__("heads", [l["heads"][0]] * len(l["heads"])), "layers[0].heads"),
            ("out of range", lambda l: l.__setitem__("heads", [99] + l["heads"][1:]), "layers[0].heads"),
            # A float where an index belongs: converting 4e28 to int64 is undefined behaviour (found by fuzz_plan).
            ("float", lambda l: l.__setitem__("ffn", [4.4e28] + l["ffn"][1:]), "expected an integer")):
        plan = json.loads(json.dumps(good))
        edit(plan["layers"][0])
        json.dump(plan, open(plan_file, "w"))
        p = run("run", cfg, "--force", "export")
        expect_error(p, "CheckpointError", "plan.json", says)
        assert export.read_bytes() == before, "the verified export was touched"
    json.dump(good, open(plan_file, "w"))


def test_cache_indices_outside_the_vocabulary(base, tmp_path):
    cfg = write_run_config(tmp_path, base / "llama", base / "tokens.h5")
    assert run("run", cfg, "--stages", "teacher_cache").returncode == 0
    chunk = sorted((tmp_path / "cache").glob("*/chunk-*.h5"))[0]
    with h5py.File(chunk, "a") as f:
        idx = f["topk_indices"][...]
        idx[:, 2, 3] = VOCAB + 7
        f["topk_indices"][...] = idx
    expect_error(run("run", cfg), "CacheError", chunk.name, "topk_indices", "fail their checksum")
    with h5py.File(chunk, "a") as f:  # without checksums: the range check
        del f["row_xxh64"]
    expect_error(run("run", cfg), "CacheError", chunk.name, "topk_indices", str(VOCAB + 7))


def test_preprocessor_config_of_a_text_model_is_not_read(base, tmp_path):
    m = copy_model(base, tmp_path, "prep")
    open(m / "preprocessor_config.json", "w").write("{not json")
    p = run("run", write_run_config(tmp_path, m, base / "tokens.h5"), "--stages", "teacher_cache")
    assert p.returncode == 0, p.stderr


# 7. validate catches what would fail late.
def test_validate_refuses_long_or_control_names(base, tmp_path):
    cfg = write_run_config(tmp_path, base / "llama", base / "tokens.h5", extra='[export]\nname = "' + "x" * 300 + '"')
    expect_error(run("validate", cfg), "ConfigError", "export.name", code=2)


# 8. HDF5 problems name the file and the dataset.
def test_hdf5_problems_name_file_and_dataset(base, tmp_path):
    with h5py.File(tmp_path / "group.h5", "w") as f:
        f.create_group("input_ids")
    expect_error(run("run", write_run_config(tmp_path, base / "llama", tmp_path / "group.h5", run="g")),
                 "DataError", "group.h5", "input_ids", "group")
    with h5py.File(tmp_path / "lzf.h5", "w") as f:
        f.create_dataset("input_ids", data=np.zeros((40, SEQ), np.int32), compression="lzf")
    expect_error(run("run", write_run_config(tmp_path, base / "llama", tmp_path / "lzf.h5", run="l")),
                 "DataError", "lzf.h5", "input_ids", "filter")
    data = open(base / "tokens.h5", "rb").read()
    open(tmp_path / "truncated.h5", "wb").write(data[: len(data) // 2])
    expect_error(run("run", write_run_config(tmp_path, base / "llama", tmp_path / "truncated.h5", run="t")),
                 "DataError", "truncated.h5")


# 9. A model.safetensors that is a directory.
def test_weights_that_are_a_directory(base, tmp_path):
    m = copy_model(base, tmp_path, "dir")
    os.remove(m / "model.safetensors")
    os.mkdir(m / "model.safetensors")
    expect_error(run("inspect", m), "CheckpointError", "model.safetensors", "not a regular file")


# 10. Side files linked outside the model are refused; hub-cache links into blobs are followed.
def test_side_file_links(base, tmp_path):
    m = copy_model(base, tmp_path, "link")
    os.symlink("/etc/hostname", m / "tokenizer.json")
    expect_error(run("inspect", m), "CheckpointError", "tokenizer.json", "/etc/hostname")
    hub = tmp_path / "models--org--tiny"
    snap = hub / "snapshots" / "abc123"
    shutil.copytree(base / "llama", snap)
    os.makedirs(hub / "blobs")
    open(hub / "blobs" / "deadbeef", "w").write('{"version": "1.0"}')
    os.symlink("../../blobs/deadbeef", snap / "tokenizer.json")
    assert run("inspect", snap).returncode == 0
