"""The BERT adapter (BertModel, sentence encoders) against transformers: last_hidden_state and
pooler_output in fp32 and bf16 (padded and not), parameter counts, keep-all export, a pruned pipeline
run on padded sentences whose export loads with from_pretrained and computes what our forward computes,
and the refusals (other heads, relative positions, sequences beyond max_position_embeddings). On the
real all-MiniLM-L6-v2 (launch/real_models.py), the forward matches transformers on real sentences.
"""
import json
import os

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import MODELS
from test_models import assert_loads_cleanly, compare, run_forward, tensors_of

transformers = pytest.importorskip("transformers")

VOCAB = 300

VARIANTS = {
    # name: (BertConfig kwargs, add_pooling_layer)
    "pooler": (dict(hidden_size=64, num_attention_heads=4, intermediate_size=96, num_hidden_layers=3), True),
    "no_pooler_3types": (dict(hidden_size=48, num_attention_heads=6, intermediate_size=80, num_hidden_layers=2,
                              type_vocab_size=3, layer_norm_eps=1e-5), False),
}


def make(path, name, dtype=torch.float32):
    kwargs, pooler = VARIANTS[name]
    torch.manual_seed(sum(map(ord, name)))
    config = transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=64, initializer_range=0.1, **kwargs)
    model = transformers.BertModel(config, add_pooling_layer=pooler).eval()
    # Random LayerNorm weights and biases (transformers initializes them to 1 and 0, which would hide a
    # missing one), and random token-type embeddings.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "LayerNorm.weight" in n:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model.to(dtype)


def sentence_batch(vocab, batch=3, length=17, seed=0):
    """[CLS]-like first token, right padding as a tokenizer pads sentences of different lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, -6:] = 0
    mask[2, -11:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_hidden_states_match_transformers(tmp_path, cli, variant, dtype):
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    model = make(tmp_path / "model", variant, torch_dtype)
    ids, mask = sentence_batch(VOCAB)
    for label, inputs, where in ((f"bert {variant} {dtype} padded", {"input_ids": ids, "attention_mask": mask}, mask.bool()),
                                 (f"bert {variant} {dtype}", {"input_ids": ids}, None)):
        with torch.no_grad():
            theirs = model(**inputs)
            reference = model.float()(**inputs) if dtype == "bf16" else None
            model.to(torch_dtype)
        ours = run_forward(cli, tmp_path / "model", tmp_path, inputs, dtype)
        compare(ours["last_hidden_state"], theirs.last_hidden_state, dtype, label + " last_hidden_state", where,
                reference.last_hidden_state if reference is not None else None)
        if VARIANTS[variant][1]:
            compare(ours["pooler_output"], theirs.pooler_output, dtype, label + " pooler_output")
        else:
            assert "pooler_output" not in ours


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameter_count_and_keep_all_export(tmp_path, cli, inspect_json, variant):
    src, dst = tmp_path / "model", tmp_path / "export"
    model = make(src, variant)
    info = inspect_json(src)
    assert info["model_type"] == "bert"
    assert info["config_parameters"] == info["parameters"] == sum(p.numel() for p in model.parameters()), info
    cli("export", "--keep-all", src, dst)
    a, b = tensors_of(src), tensors_of(dst)
    assert a.keys() == b.keys() and all(torch.equal(a[k][1], b[k][1]) for k in a)
    # A BertModel saved without its pooler loads as one (transformers would add a random pooler otherwise).
    exported = assert_loads_cleanly(Bert(VARIANTS[variant][1]), dst)
    ids, mask = sentence_batch(VOCAB)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).last_hidden_state,
                           exported(input_ids=ids, attention_mask=mask).last_hidden_state)


class Bert:
    """BertModel.from_pretrained with or without the pooler, for assert_loads_cleanly."""

    def __init__(self, pooler):
        self.pooler = pooler

    def from_pretrained(self, path, **kwargs):
        return transformers.BertModel.from_pretrained(path, add_pooling_layer=self.pooler, **kwargs)


SEQ = 16


def sentences_h5(path, samples, seed=0):
    """Padded 'sentences' of 5..SEQ tokens, as launch/prepare_tokens.py --sentences writes them."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((samples, SEQ), np.int32)
    mask = np.zeros((samples, SEQ), np.int32)
    for i in range(samples):
        n = int(rng.integers(5, SEQ + 1))
        ids[i, :n] = rng.integers(1, VOCAB, size=n)
        mask[i, :n] = 1
    with h5py.File(path, "w") as f:
        f["input_ids"] = ids
        f["attention_mask"] = mask
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))


@pytest.mark.parametrize("heal", [0, 3])
def test_pruned_export_loads_and_matches(tmp_path, cli, mpirun, heal):
    make(tmp_path / "model", "pooler")
    ids, mask = sentences_h5(tmp_path / "sentences.h5", 48)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
[run]
dir = "{tmp_path / 'run'}"
threads_per_rank = 1
[model]
path = "{tmp_path / 'model'}"
dtype = "fp32"
[data]
path = "{tmp_path / 'sentences.h5'}"
seq_len = {SEQ}
[train]
steps = 6
warmup = 2
micro_batch = 4
holdout = 8
importance_batches = 2
[teacher]
cache_root = "{tmp_path / 'cache'}"
[budget]
target = 0.7
[search]
ffn_multiple = 16
hidden_multiple = 16
probe_shapes = 2
probe_steps = 2
probe_samples = 4
[calibrate]
steps = 4
[heal]
steps = {heal}
warmup = 1
""")
    mpirun(2, cfg)
    index = json.load(open(next((tmp_path / "cache").glob("*/index.json"))))
    assert index["kind"] == "hidden" and index["hidden_size"] == 64 and index["seq_len"] == SEQ
    export = tmp_path / "run" / "export" / "slim"
    plan = json.load(open(tmp_path / "run" / "plan" / "plan.json"))["shape"]
    assert plan["cost_ratio"] <= 0.7
    written = json.load(open(export / "config.json"))
    assert written["model_type"] == "bert" and written["hidden_size"] == plan["hidden_size"]
    assert written["hidden_size"] == written["num_attention_heads"] * 16  # head size kept
    model = assert_loads_cleanly(transformers.AutoModel, export)
    assert sum(p.numel() for p in model.parameters()) == plan["parameters"]
    with torch.no_grad():
        theirs = model(input_ids=ids[-8:], attention_mask=mask[-8:]).last_hidden_state
    ours = run_forward(cli, export, tmp_path, {"input_ids": ids[-8:], "attention_mask": mask[-8:]}, "fp32")
    m = mask[-8:].bool()
    rel = ((theirs - ours["last_hidden_state"])[m].abs().max() / theirs[m].abs().max()).item()
    assert rel <= 1e-4, rel
    summary = json.load(open(tmp_path / "run" / "export" / "summary.json"))
    assert summary["verify"]["passed"], summary["verify"]
    q = summary["evaluate"]["export"]
    assert -1 <= q["min_cosine"] <= q["cosine"] <= 1 and q["samples"] == 8, q
    # The evaluate numbers are transformers' mean-pooled cosine on the held-out sentences.
    teacher = transformers.AutoModel.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        t = teacher(input_ids=ids[-8:], attention_mask=mask[-8:]).last_hidden_state
    # In the teacher's coordinates: the export's channels are the teacher's plan["hidden"], the rest zeros.
    kept = json.load(open(tmp_path / "run" / "plan" / "plan.json"))["hidden"]
    wide = torch.zeros_like(t)
    wide[..., kept] = theirs
    mf = mask[-8:].unsqueeze(-1).float()
    pool = lambda h: (h * mf).sum(1) / mf.sum(1)
    cos = torch.nn.functional.cosine_similarity(pool(wide), pool(t), dim=-1)
    assert abs(cos.mean().item() - q["cosine"]) <= 1e-4, (cos, q)
    kept_cos = torch.nn.functional.cosine_similarity(pool(theirs), pool(t)[:, kept], dim=-1)
    assert abs(kept_cos.mean().item() - q["cosine_kept_channels"]) <= 1e-4, (kept_cos, q)
    card = (export / "README.md").read_text()
    assert "pipeline_tag: feature-extraction" in card and "cosine similarity of mean-pooled embeddings" in card
    if heal == 0:  # the least-squares refit of calibrate is for causal LMs: refused by name, before any fit
        cfg.write_text(cfg.read_text().replace("[calibrate]\nsteps = 4", "[calibrate]\nsteps = 4\nreconstruct = true"))
        p = mpirun(2, cfg, check=False)
        assert p.returncode != 0 and "calibrate.reconstruct refits the output projections of causal LMs" in p.stderr
        assert "not of this bert model" in p.stderr and "calibrate: fitting" not in p.stderr, p.stderr


@pytest.mark.parametrize("key,value,message", [
    ("architectures", ["BertForMaskedLM"], "'BertForMaskedLM' is not supported"),
    ("position_embedding_type", "relative_key", "'relative_key' is not supported"),
    ("hidden_act", "relu", "key 'hidden_act'"),
    ("num_attention_heads", 5, "not a multiple of num_attention_heads"),
])
def test_unsupported_configs_are_refused(tmp_path, cli, key, value, message):
    make(tmp_path / "model", "no_pooler_3types")
    cfg = json.load(open(tmp_path / "model" / "config.json"))
    cfg[key] = value
    json.dump(cfg, open(tmp_path / "model" / "config.json", "w"))
    p = cli("inspect", tmp_path / "model", check=False)
    assert p.returncode != 0 and message in p.stderr and "config.json" in p.stderr, p.stderr


def test_sequence_beyond_max_positions_is_refused(tmp_path, cli):
    make(tmp_path / "model", "pooler")
    save_file({"input_ids": torch.ones(1, 65, dtype=torch.long)}, tmp_path / "in.safetensors")
    p = cli("forward", tmp_path / "model", "--inputs", tmp_path / "in.safetensors", "--output",
            tmp_path / "out.safetensors", check=False)
    assert p.returncode != 0 and "exceeds max_position_embeddings 64" in p.stderr, p.stderr


def test_real_minilm_matches_transformers(tmp_path, cli):
    path = os.path.join(MODELS, "all-minilm-l6-v2")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        pytest.skip(f"{path} missing: run launch/setup.sh (launch/real_models.py)")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    sentences = ["The Debian Policy Manual describes the structure of the distribution.",
                 "A package must not modify configuration files of another package.",
                 "Short one."]
    enc = tok(sentences, padding=True, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    model = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        theirs = model(**inputs).last_hidden_state
    ours = run_forward(cli, path, tmp_path, inputs, "fp32")["last_hidden_state"]
    compare(ours, theirs, "fp32", "all-MiniLM-L6-v2 last_hidden_state", enc["attention_mask"].bool())
