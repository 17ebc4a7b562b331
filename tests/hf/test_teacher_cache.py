"""Stage teacher_cache through `hawada-pipeline run`: the cache read with h5py against transformers'
logits, reuse across runs, 2 ranks against 1, kills at three points then a rerun, and bad inputs.
"""
import glob
import json
import os
import re
import subprocess
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import CLI

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 300, 8


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "llama"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                                      tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    return path, model


def token_file(path, samples, seed=0, vocab=VOCAB):
    ids = np.random.default_rng(seed).integers(0, vocab, size=(samples, SEQ)).astype(np.int32)
    with h5py.File(path, "w") as f:
        f["input_ids"] = ids
    return ids


def config(tmp_path, model, data, cache, run="run", fmt="tokens_h5", extra=""):
    text = f"""
[run]
dir = "{tmp_path / run}"
threads_per_rank = 1
[model]
path = "{model}"
dtype = "fp32"
[data]
format = "{fmt}"
path = "{data}"
seq_len = {SEQ}
[teacher]
cache_root = "{cache}"
top_k = 16
store_dtype = "bf16"
batch_size = 16
{extra}
"""
    p = tmp_path / f"{run}.toml"
    p.write_text(text)
    return p


def cache_dir(cache):
    dirs = [d for d in glob.glob(str(cache / "*")) if os.path.isdir(d)]
    assert len(dirs) == 1, dirs
    return dirs[0]


def read_cache(directory):
    """All datasets of all chunks, concatenated in sample order (h5py: the independent reader)."""
    index = json.load(open(os.path.join(directory, "index.json")))
    out = {}
    for chunk in index["chunks"]:
        with h5py.File(os.path.join(directory, chunk["file"]), "r") as f:
            assert f.attrs["format_version"] == index["format_version"]
            for k in f:
                out.setdefault(k, []).append(f[k][:])
    return index, {k: np.concatenate(v) for k, v in out.items()}


def bf16_bits_to_float(bits):
    return torch.from_numpy(bits.astype(np.int16)).view(torch.bfloat16).float()


def test_cache_matches_transformers_and_is_reused(tmp_path, llama, cli):
    path, model = llama
    ids = token_file(tmp_path / "tokens.h5", 100)
    cache = tmp_path / "cache"
    first = cli("run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "tokens.h5", cache))
    assert "teacher forward on 100 samples" in first.stderr

    index, c = read_cache(cache_dir(cache))
    assert index["samples"] == 100 and index["top_k"] == 16 and len(index["chunks"]) == 2
    assert c["topk_values"].shape == (100, SEQ, 16) and c["topk_indices"].dtype == np.int32
    assert (c["sample_index"] == np.arange(100)).all()
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids).long()).logits.float()
    ref_values, ref_indices = logits.topk(16, dim=-1)
    ref_lse = torch.logsumexp(logits, dim=-1)
    values = bf16_bits_to_float(c["topk_values"])
    assert torch.equal(torch.from_numpy(c["topk_indices"]).long(), ref_indices), "top-k indices differ"
    value_err = ((values - ref_values).abs() / ref_values.abs().clamp_min(1e-3)).max().item()
    lse_err = (torch.from_numpy(c["logsumexp"]) - ref_lse).abs().max().item()
    print(f"top-k values: max relative error {value_err:.2e} (bf16 storage: 2^-8 = 3.9e-3); lse max |diff| {lse_err:.2e}")
    assert value_err <= 2 ** -8
    assert lse_err <= 1e-4 * ref_lse.abs().max().item()

    # Same teacher, data and settings from another run directory: reused, no teacher forward.
    second = cli("run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "tokens.h5", cache, run="other"))
    assert "reused the complete cache" in second.stderr and "teacher forward on" not in second.stderr
    # A different k: a new directory, never a mix.
    k8 = config(tmp_path, path, tmp_path / "tokens.h5", cache, run="k8")
    k8.write_text(k8.read_text().replace("top_k = 16", "top_k = 8"))
    third = cli("run", "--stages=teacher_cache", k8)
    assert "teacher forward on 100 samples" in third.stderr
    assert len([d for d in glob.glob(str(cache / "*")) if os.path.isdir(d)]) == 2


def test_teacher_model_is_cached_and_must_share_the_vocabulary(tmp_path, llama, cli):
    """teacher.model: the cache holds another model's logits (a deeper one here, as when model.path is an earlier
    round's cut and the teacher the dense model), under its own key; a model over another vocabulary is refused."""
    path, _ = llama
    ids = token_file(tmp_path / "tokens.h5", 20)
    torch.manual_seed(1)
    deep = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.2, tie_word_embeddings=False)).eval()
    deep.save_pretrained(tmp_path / "deep")
    cache = tmp_path / "cache"
    cli("run", "--stages=teacher_cache",
        config(tmp_path, path, tmp_path / "tokens.h5", cache, extra=f'model = "{tmp_path / "deep"}"'))
    _, c = read_cache(cache_dir(cache))
    with torch.no_grad():
        logits = deep(input_ids=torch.from_numpy(ids).long()).logits.float()
    ref_values, ref_indices = logits.topk(16, dim=-1)
    assert torch.equal(torch.from_numpy(c["topk_indices"]).long(), ref_indices), "not the teacher model's top-k"
    assert ((bf16_bits_to_float(c["topk_values"]) - ref_values).abs() / ref_values.abs().clamp_min(1e-3)).max() <= 2 ** -8
    # The model's own cache is another directory, never a mix.
    cli("run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "tokens.h5", cache, run="own"))
    assert len([d for d in glob.glob(str(cache / "*")) if os.path.isdir(d)]) == 2

    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)).save_pretrained(tmp_path / "other-vocab")
    bad = cli("run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "tokens.h5", cache, run="bad",
              extra=f'model = "{tmp_path / "other-vocab"}"'), check=False)
    assert bad.returncode == 2, bad.stderr
    assert "teacher.model" in bad.stderr and f"vocabulary ({VOCAB} tokens), got {VOCAB + 4} tokens" in bad.stderr
    missing = cli("run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "tokens.h5", cache, run="miss",
                  extra=f'model = "{tmp_path / "nowhere"}"'), check=False)
    assert missing.returncode == 2 and "teacher.model" in missing.stderr, missing.stderr


def test_two_ranks_equal_one_rank(tmp_path, llama, mpirun):
    path, _ = llama
    token_file(tmp_path / "tokens.h5", 300, seed=1)
    mpirun(1, "run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "tokens.h5", tmp_path / "cache_one", run="one"))
    two = mpirun(2, "run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "tokens.h5", tmp_path / "cache_two", run="two"))
    assert "teacher forward on 300 samples" in two.stderr
    index1, a = read_cache(cache_dir(tmp_path / "cache_one"))
    index2, b = read_cache(cache_dir(tmp_path / "cache_two"))
    assert index1 == index2
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # Written by 2 ranks, read by 1: the same cache, reused.
    again = mpirun(1, "run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "tokens.h5", tmp_path / "cache_two", run="again"))
    assert "reused the complete cache" in again.stderr


@pytest.mark.parametrize("point", ["before_first_write", "after_chunk", "before_index"])
def test_killed_rank_then_rerun_completes_the_same_cache(tmp_path, llama, mpirun, point):
    path, _ = llama
    token_file(tmp_path / "tokens.h5", 300, seed=2)  # 5 chunks: rank 1 owns 3
    mpirun(1, "run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "tokens.h5", tmp_path / "cache_ref", run="ref"))
    cfg = config(tmp_path, path, tmp_path / "tokens.h5", tmp_path / "cache")
    killed = mpirun(2, "run", "--stages=teacher_cache", cfg, env={"HAWADA_FAULT": f"teacher_cache.{point}@1:kill"}, check=False)
    assert killed.returncode != 0
    directory = cache_dir(tmp_path / "cache")
    assert not os.path.exists(os.path.join(directory, "index.json")), "index published although a rank died"
    rerun = mpirun(2, "run", "--stages=teacher_cache", cfg)
    done = re.search(r"teacher forward on (\d+) samples, (\d+) reused", rerun.stderr)
    assert done, rerun.stderr
    computed, reused = int(done.group(1)), int(done.group(2))
    print(f"{point}: rerun computed {computed} samples, reused {reused}")
    assert computed + reused == 300
    if point == "before_index":
        assert computed == 0, "every chunk was written before the kill"
    if point == "after_chunk":
        assert reused >= 64, "the chunk written before the kill must be reused"
    _, ref = read_cache(cache_dir(tmp_path / "cache_ref"))
    _, got = read_cache(directory)
    for k in ref:
        assert np.array_equal(ref[k], got[k]), k
    assert not glob.glob(os.path.join(directory, ".*tmp*")), "temporary files left behind"


def test_two_jobs_fill_one_cache_at_once(tmp_path, llama, mpirun):
    """Issue 37 drill 2: two jobs (2 ranks each) with the same teacher and data on one teacher.cache_root at once.
    Job A pauses between writing a chunk's temporary file and renaming it over the chunk's name (a slow writer);
    job B starts then and computes the same chunks. Each chunk is computed once or twice identically, never torn
    or lost: a writer never deletes a temporary that a live job is writing. Both jobs finish, the cache equals a
    solo run's, no temporary is left, and a third job reuses it whole."""
    path, _ = llama
    token_file(tmp_path / "tokens.h5", 200, seed=3)  # 4 chunks: each rank of each job owns 2
    mpirun(1, "run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "tokens.h5", tmp_path / "cache_solo", run="solo"))
    shared = tmp_path / "shared"
    cfg_a = config(tmp_path, path, tmp_path / "tokens.h5", shared, run="a")
    cfg_b = config(tmp_path, path, tmp_path / "tokens.h5", shared, run="b")
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1"}

    def start(cfg, extra_env=None):
        exports = [a for k in (extra_env or {}) for a in ("-x", k)]
        return subprocess.Popen(["mpirun", "-np", "2", "--oversubscribe", *exports, CLI, "run",
                                 "--stages=teacher_cache", str(cfg)], env={**env, **(extra_env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    job_a = start(cfg_a, {"HAWADA_FAULT": "teacher_cache.before_rename@0:pause"})
    deadline = time.time() + 120
    while not glob.glob(str(shared / "*" / ".chunk-*.tmp.*")):  # A's rank 0 holds a whole chunk, unpublished
        assert job_a.poll() is None and time.time() < deadline, "job A never wrote a chunk"
        time.sleep(0.05)
    job_b = start(cfg_b)
    out_b = job_b.communicate(timeout=300)
    out_a = job_a.communicate(timeout=300)
    assert job_a.returncode == 0, out_a[1]
    assert job_b.returncode == 0, out_b[1]
    assert "fault injected at 'teacher_cache.before_rename' (pause)" in out_a[1]
    directory = cache_dir(shared)
    assert not glob.glob(os.path.join(directory, ".*tmp*")), "temporary files left behind"
    index_solo, solo = read_cache(cache_dir(tmp_path / "cache_solo"))
    index_shared, got = read_cache(directory)
    assert index_solo == index_shared
    for k in solo:
        assert np.array_equal(solo[k], got[k]), k
    third = mpirun(2, "run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "tokens.h5", shared, run="c"))
    assert "reused the complete cache" in third.stderr


def test_tampered_chunk_is_refused(tmp_path, llama, cli):
    path, _ = llama
    token_file(tmp_path / "tokens.h5", 70)
    cfg = config(tmp_path, path, tmp_path / "tokens.h5", tmp_path / "cache")
    cli("run", "--stages=teacher_cache", cfg)
    directory = cache_dir(tmp_path / "cache")
    chunk = sorted(glob.glob(os.path.join(directory, "chunk-*.h5")))[0]
    with h5py.File(chunk, "a") as f:
        del f.attrs["fingerprint"]
        f.attrs.create("fingerprint", np.bytes_("0123456789abcdef"))
    os.remove(tmp_path / "run" / "stages" / "teacher_cache.done")
    p = cli("run", "--stages=teacher_cache", cfg, check=False)
    assert p.returncode == 1 and "CacheError" in p.stderr and os.path.basename(chunk) in p.stderr
    assert "fingerprint 0123456789abcdef" in p.stderr


def test_flipped_bit_in_a_topk_chunk_is_refused(tmp_path, llama, cli):
    """The drill of issue 37: one exponent bit of one bf16 teacher logit flipped in chunk 0 (1.43 became 0.0056, a
    finite value no range check can catch); the next run that reads it stops with a CacheError naming the chunk and
    the sample instead of training on it."""
    path, _ = llama
    token_file(tmp_path / "tokens.h5", 70)
    cfg = config(tmp_path, path, tmp_path / "tokens.h5", tmp_path / "cache",
                 extra="[train]\nsteps = 2\nwarmup = 1\nmicro_batch = 4\nholdout = 4\n[budget]\ntarget = 0.8")
    cli("run", "--stages=teacher_cache", cfg)
    chunk = sorted(glob.glob(os.path.join(cache_dir(tmp_path / "cache"), "chunk-*.h5")))[0]
    with h5py.File(chunk, "a") as f:
        assert f["row_xxh64"].shape == (64,)
        v = f["topk_values"][5, 2, 0]
        f["topk_values"][5, 2, 0] = v ^ np.uint16(1 << 9)  # an exponent bit of the bf16 bits
    assert torch.isfinite(bf16_bits_to_float(np.array([v ^ np.uint16(1 << 9)], dtype=np.uint16))).all()
    p = cli("run", "--stages=teacher_cache,train_gates", cfg, check=False)
    assert p.returncode == 1 and "CacheError" in p.stderr, p.stderr
    assert os.path.basename(chunk) in p.stderr and "the stored bytes of sample 5 fail their checksum" in p.stderr
    assert not (tmp_path / "run" / "stages" / "train_gates.done").exists()


def test_bad_token_data_names_file_and_dataset(tmp_path, llama, cli):
    path, _ = llama
    ids = token_file(tmp_path / "tokens.h5", 20)
    ids[7, 3] = VOCAB + 5
    with h5py.File(tmp_path / "oov.h5", "w") as f:
        f["input_ids"] = ids
    p = cli("run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "oov.h5", tmp_path / "cache"), check=False)
    assert p.returncode == 1 and "DataError" in p.stderr
    assert "oov.h5" in p.stderr and "dataset 'input_ids'" in p.stderr and f"token id {VOCAB + 5}" in p.stderr
    with h5py.File(tmp_path / "float.h5", "w") as f:
        f["input_ids"] = ids.astype(np.float32)
    p = cli("run", "--stages=teacher_cache", config(tmp_path, path, tmp_path / "float.h5", tmp_path / "cache", run="f"), check=False)
    assert p.returncode == 1 and "float.h5" in p.stderr and "expected integer" in p.stderr


def test_vit_classifier_cache_holds_full_logits(tmp_path, cli):
    torch.manual_seed(0)
    config_ = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=96, num_labels=10)
    model = transformers.ViTForImageClassification(config_).eval()
    model.save_pretrained(tmp_path / "vit")
    pixels = np.random.default_rng(0).standard_normal((20, 3, 32, 32)).astype(np.float32)
    with h5py.File(tmp_path / "images.h5", "w") as f:
        f["pixel_values"] = pixels
    cli("run", "--stages=teacher_cache", config(tmp_path, tmp_path / "vit", tmp_path / "images.h5", tmp_path / "cache", fmt="images_h5"))
    index, c = read_cache(cache_dir(tmp_path / "cache"))
    assert index["kind"] == "classifier" and c["logits"].shape == (20, 10)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(pixels)).logits
    diff = (torch.from_numpy(c["logits"]) - ref).abs().max().item()
    print(f"vit cached logits: max |diff| {diff:.2e}")
    assert diff <= 1e-4 * ref.abs().max().item()


def native_bf16():
    flags = open("/proc/cpuinfo").read()
    return " amx_bf16" in flags or " avx512_bf16" in flags


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 (AMX, AVX512-BF16)")
def test_bf16_head_caches_and_trains_within_bf16_rounding(tmp_path, cli):
    """model.head_matmul = "bf16" (what "auto" picks on this CPU): the teacher's logits are the head's product of
    the bf16-rounded final hidden states and weights, accumulated in fp32 (transformers' hidden states, rounded
    here, as the reference); the cache gets its own key; train_gates' losses stay within bf16 rounding of fp32's.
    A head large enough for oneDNN's bf16 path (it keeps small products in fp32)."""
    vocab, hidden, seq = 4096, 256, 32
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=512, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, initializer_range=0.05,
                                   tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "llama")
    ids = np.random.default_rng(1).integers(0, vocab, size=(40, seq)).astype(np.int32)
    with h5py.File(tmp_path / "tokens.h5", "w") as f:
        f["input_ids"] = ids
    runs = {}
    for head in ("fp32", "bf16"):
        p = tmp_path / f"{head}.toml"
        p.write_text(f"""
[run]
dir = "{tmp_path / head}"
threads_per_rank = 1
[model]
path = "{tmp_path / 'llama'}"
dtype = "fp32"
head_matmul = "{head}"
[data]
path = "{tmp_path / 'tokens.h5'}"
seq_len = {seq}
[teacher]
cache_root = "{tmp_path / 'cache'}"
top_k = 16
batch_size = 16
[train]
steps = 3
warmup = 1
micro_batch = 8
holdout = 8
importance_batches = 1
[budget]
target = 0.7
""")
        runs[head] = cli("run", "--stages=teacher_cache,train_gates", p).stderr
    if "LM head: bf16 products" not in runs["bf16"]:
        # The pipeline measures whether LibTorch's oneDNN really runs fp32 products in bf16 here (on an
        # AVX512-BF16 CPU without AMX it did not) and says so instead of claiming it.
        assert "runs in fp32 here" in runs["bf16"], runs["bf16"]
        pytest.skip("native bf16 flags, but oneDNN keeps fp32 matmuls in fp32 on this CPU: the head ran in fp32")
    assert "LM head: bf16 products" in runs["bf16"] and "LM head: bf16" not in runs["fp32"]
    dirs = sorted(glob.glob(str(tmp_path / "cache" / "*" / "index.json")), key=os.path.getmtime)
    assert len(dirs) == 2, "a bf16-head cache has its own key"
    caches = {head: read_cache(os.path.dirname(d))[1] for head, d in zip(("fp32", "bf16"), dirs)}

    with torch.no_grad():
        h = model.model(input_ids=torch.from_numpy(ids).long()).last_hidden_state.double()
    w = model.lm_head.weight.detach().double()
    ref32 = h @ w.T
    refbf = h.to(torch.bfloat16).double() @ w.to(torch.bfloat16).double().T
    scale = ref32.abs().max().item()
    lse32, lsebf = (torch.from_numpy(caches[k]["logsumexp"]).double() for k in ("fp32", "bf16"))
    assert (lse32 - torch.logsumexp(ref32, -1)).abs().max().item() <= 1e-5 * scale
    # The bf16 head's log-sum-exp is that of the rounded product, not the fp32 one.
    bf_err = (lsebf - torch.logsumexp(refbf, -1)).abs().max().item()
    assert bf_err <= 1e-4 * scale, bf_err
    assert (lsebf - lse32).abs().max().item() > 10 * bf_err
    first = torch.from_numpy(caches["bf16"]["topk_indices"][..., 0]).long()
    assert (first == refbf.argmax(-1)).double().mean().item() >= 0.99

    def losses(head):
        return [json.loads(l)["loss"] for l in open(tmp_path / head / "train" / "metrics.jsonl")]
    l32, lbf = losses("fp32"), losses("bf16")
    assert len(l32) == len(lbf) == 3
    assert l32 != lbf
    # Step 1 starts from gates the importance pass (itself under the head's precision) initialised, and this
    # near-uniform teacher's KL of ~0.03 moves by a third with which few channels open first; after that the
    # losses agree to bf16 rounding (measured: 0.5% and 0.05%).
    for a, b in zip(l32[1:], lbf[1:]):
        assert abs(a - b) <= 2e-2 * abs(a), (l32, lbf)
