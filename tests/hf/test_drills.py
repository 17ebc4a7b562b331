"""Issue 37 drill 3, a full disk: a small tmpfs the test mounts (skipped where mounting is not allowed) fills
during teacher_cache, during heal's checkpoints and during export. Each is a typed error naming the path, nothing
is published (no cache index, no stage marker, no healed weights, no export), and the rerun after space is freed
finishes with the same result as a run that had space (bitwise: these stages are deterministic on CPU).
"""
import glob
import os
import subprocess
import uuid

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 256, 16
GATE_STAGES = "teacher_cache,train_gates,reduce_gates,rounding_search,calibrate"


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of 96 KiB at tmp_path/fs; yields (path, resize(bytes))."""
    where = tmp_path / "fs"
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(where)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {p.stderr.strip()}")

    def resize(size):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)

    try:
        yield where, resize
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where, leave=4096):
    """Writes a filler file until `where` has `leave` bytes free (or less); returns its path."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    filler = os.path.join(where, f"filler-{uuid.uuid4().hex}")
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("drill")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                                      tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(d / "llama")
    np.random.default_rng(0).integers(0, VOCAB, size=72 * SEQ).astype(np.uint16).tofile(d / "tokens.bin")
    return d


def write_config(path, model_dir, run_dir, cache_root):
    path.write_text(f"""
[run]
dir = "{run_dir}"
threads_per_rank = 1
seed = 5
[model]
path = "{model_dir / 'llama'}"
dtype = "fp32"
[data]
format = "tokens_bin"
path = "{model_dir / 'tokens.bin'}"
seq_len = {SEQ}
[teacher]
cache_root = "{cache_root}"
top_k = 32
[train]
steps = 4
warmup = 2
micro_batch = 2
holdout = 8
importance_batches = 2
[budget]
target = 0.6
[search]
ffn_multiple = 16
[calibrate]
steps = 2
micro_batch = 2
[heal]
steps = 6
lr = 0.003
warmup = 1
checkpoint_every = 2
""")
    return path


def no_space(p, what):
    assert p.returncode != 0, f"{what}: the job went on although the disk was full"
    assert "No space left on device" in p.stderr or "ENOSPC" in p.stderr, p.stderr[-3000:]
    assert "Error" in p.stderr  # a typed error (IoError, CacheError, ...), not a crash
    assert "Segmentation" not in p.stderr and "core dumped" not in p.stderr
    print(what + ": " + next(line for line in p.stderr.splitlines() if "No space left" in line))


def read_chunks(cache_root):
    [directory] = [d for d in glob.glob(os.path.join(cache_root, "*")) if os.path.isdir(d)]
    import h5py
    out = {}
    for chunk in sorted(glob.glob(os.path.join(directory, "chunk-*.h5"))):
        with h5py.File(chunk, "r") as f:
            for k in f:
                out.setdefault(k, []).append(f[k][:])
    return directory, {k: np.concatenate(v) for k, v in out.items()}


def test_full_disk_during_teacher_cache(tmp_path, model, mpirun, small_fs):
    where, resize = small_fs
    ref = mpirun(2, "run", f"--stages=teacher_cache",
                 write_config(tmp_path / "ref.toml", model, tmp_path / "ref", tmp_path / "cache_ref"))
    cfg = write_config(tmp_path / "full.toml", model, tmp_path / "run", where / "cache")
    p = mpirun(2, "run", "--stages=teacher_cache", cfg, check=False)
    no_space(p, "teacher_cache")
    assert str(where / "cache") in p.stderr, "the error does not name the cache path"
    directory = glob.glob(str(where / "cache" / "*"))[0]
    assert not os.path.exists(os.path.join(directory, "index.json")), "a cache index published on a full disk"
    assert not (tmp_path / "run" / "stages" / "teacher_cache.done").exists()
    resize("4m")
    again = mpirun(2, "run", "--stages=teacher_cache", cfg)
    assert "teacher forward on" in again.stderr
    _, want = read_chunks(tmp_path / "cache_ref")
    got_dir, got = read_chunks(where / "cache")
    for k in want:
        assert np.array_equal(want[k], got[k]), k
    assert not glob.glob(os.path.join(got_dir, ".*tmp*")), "temporary files left behind"
    assert ref.returncode == 0


def test_full_disk_during_heal_and_export(tmp_path, model, mpirun, small_fs):
    where, resize = small_fs
    mpirun(2, write_config(tmp_path / "ref.toml", model, tmp_path / "ref", tmp_path / "cache"))
    want_heal = load_file(str(tmp_path / "ref" / "heal" / "weights.safetensors"))
    want_export = {os.path.basename(f): open(f, "rb").read()
                   for f in glob.glob(str(tmp_path / "ref" / "export" / "slim" / "*.safetensors"))}
    assert want_export

    resize("64m")
    run = where / "run"
    cfg = write_config(tmp_path / "full.toml", model, run, tmp_path / "cache")
    mpirun(2, "run", f"--stages={GATE_STAGES}", cfg)

    # Heal: its first checkpoint cannot be written.
    filler = fill(where, leave=24 << 10)  # room for the logs, not for a checkpoint (weights and AdamW's moments)
    p = mpirun(2, "run", "--stages=heal", cfg, check=False)
    no_space(p, "heal")
    assert str(run / "heal") in p.stderr, "the error does not name the heal path"
    assert not (run / "stages" / "heal.done").exists()
    assert not (run / "heal" / "weights.safetensors").exists()
    os.remove(filler)
    mpirun(2, "run", "--stages=heal", cfg)
    got = load_file(str(run / "heal" / "weights.safetensors"))
    for k in want_heal:
        assert np.array_equal(got[k], want_heal[k]), k

    # Export: its shards cannot be written.
    filler = fill(where, leave=24 << 10)  # room for the logs, not for the shards
    p = mpirun(2, "run", "--stages=export", cfg, check=False)
    no_space(p, "export")
    assert str(run / "export") in p.stderr, "the error does not name the export path"
    assert not (run / "stages" / "export.done").exists()
    assert not (run / "export" / "slim").exists(), "an export published on a full disk"
    os.remove(filler)
    mpirun(2, "run", "--stages=export", cfg)
    for name, data in want_export.items():
        assert open(run / "export" / "slim" / name, "rb").read() == data, name
    left = [f for f in glob.glob(str(run / "**" / ".*tmp*"), recursive=True)]
    assert not left, f"temporaries of the failed writes left behind: {left}"
