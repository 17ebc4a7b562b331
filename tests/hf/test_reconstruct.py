"""calibrate.reconstruct on tiny transformers models (fp32): the least-squares refit of every kept block's
o_proj / down_proj, checked against an independent solve of the same normal equations from activations
that transformers computes on the exported model; 2 ranks against 1; GPT-NeoX's biases; the export loads,
passes verify and carries the refitted weights; heal starts from them.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

VOCAB, SEQ, SAMPLES = 256, 16, 24
RIDGE = 1e-4
NEOX_BUDGET = 'metric = "non_embedding_params"\ntarget = 0.8'


def make_models(d):
    torch.manual_seed(0)
    llama = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                     num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                                     tie_word_embeddings=True)
    transformers.LlamaForCausalLM(llama).save_pretrained(d / "llama")
    neox = transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, rotary_pct=0.5, initializer_range=0.3,
                                      use_parallel_residual=True, tie_word_embeddings=False)
    model = transformers.GPTNeoXForCausalLM(neox)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(d / "neox")
    deep = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                                    num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                                    tie_word_embeddings=True)
    transformers.LlamaForCausalLM(deep).save_pretrained(d / "deep")


def write_config(d, run, model="llama", calibrate="", heal="steps = 0", gates="hidden = false", accum=1,
                 budget="target = 0.6", steps=4, tokens="tokens.bin", samples=SAMPLES):
    p = d / f"{run}.toml"
    p.write_text(f"""
[run]
dir = "{d / run}"
threads_per_rank = 1
seed = 3
[model]
path = "{d / model}"
dtype = "fp32"
[data]
format = "tokens_bin"
path = "{d / tokens}"
seq_len = {SEQ}
[teacher]
cache_root = "{d / 'cache'}"
top_k = 32
[gates]
{gates}
[train]
steps = 6
warmup = 3
micro_batch = 2
grad_accum = {accum}
holdout = 8
importance_batches = 2
[budget]
{budget}
[search]
ffn_multiple = 16
probe_shapes = 1
[calibrate]
steps = {steps}
micro_batch = 2
reconstruct_samples = {samples}
{calibrate}
[heal]
{heal}
[export]
dtype = "fp32"
""")
    return p


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("reconstruct")
    make_models(d)
    np.random.default_rng(1).integers(0, VOCAB, size=72 * SEQ).astype(np.uint16).tofile(d / "tokens.bin")
    return d


def windows(d, count):
    ids = np.fromfile(d / "tokens.bin", dtype=np.uint16)[:count * SEQ].astype(np.int64)
    return torch.from_numpy(ids).view(count, SEQ)


@torch.no_grad()
def independent_refit(dense, slim, ids, layer, which):
    """The ridge least-squares solution for the slim model's projection `which` of `layer`, from activations
    transformers computes: the slim model's own inputs to that projection (its kept heads / channels) and,
    as the target, the dense projection of every head / channel computed on the slim block's input."""
    sl, dl = slim.model.layers[layer], dense.model.layers[layer]
    kept_in, target = [], []
    if which == "mlp":
        def hook(mod, args):
            x = args[0]
            kept_in.append((mod.act_fn(mod.gate_proj(x)) * mod.up_proj(x)).reshape(-1, mod.down_proj.in_features))
            target.append(dl.mlp(x).reshape(-1, dl.mlp.down_proj.out_features))
        h = sl.mlp.register_forward_pre_hook(hook)
        proj = sl.mlp.down_proj
    else:
        store = {}
        h0 = sl.self_attn.o_proj.register_forward_pre_hook(lambda m, a: store.update(a=a[0]))

        def attn_hook(mod, args, kwargs, out):
            kept_in.append(store["a"].reshape(-1, sl.self_attn.o_proj.in_features))
            target.append(dl.self_attn(*args, **kwargs)[0].reshape(-1, dl.self_attn.o_proj.out_features))
        h = sl.self_attn.register_forward_hook(attn_hook, with_kwargs=True)
        proj = sl.self_attn.o_proj
    slim(input_ids=ids)
    h.remove()
    if which != "mlp":
        h0.remove()
    a = torch.cat(kept_in).double()
    y = torch.cat(target).double()
    g = a.T @ a
    g += RIDGE * g.diagonal().mean() * torch.eye(g.shape[0], dtype=torch.float64)
    return torch.linalg.solve(g, a.T @ y).T, proj.weight.double()


def test_refit_solves_the_normal_equations_transformers_computes(setup, mpirun):
    d = setup
    # Without scale steps the export is the refit itself (the scales fitted on top are folded into it otherwise).
    p = mpirun(2, write_config(d, "r-llama", calibrate="reconstruct = true", steps=0))
    summary = json.load(open(d / "r-llama" / "calibrate" / "summary.json"))
    r = summary["reconstruct"]
    assert r["projections"] == 6 and r["tokens"] == SAMPLES * SEQ, r
    assert "calibrate: reconstruct: 6 output projections refitted" in p.stderr
    # The refit alone lowers the held-out KL of the 0/1 masks; with scale steps fitted on top, lower still.
    mpirun(2, write_config(d, "r-scaled", calibrate='reconstruct = true\nreconstruct_order = "before_scales"'))
    scaled = json.load(open(d / "r-scaled" / "calibrate" / "summary.json"))
    assert scaled["reconstruct"]["order"] == "before_scales", scaled
    assert scaled["heldout_kl_calibrated"] < scaled["heldout_kl_masks"], scaled
    slim_dir = d / "r-llama" / "export" / "slim"
    verify = json.load(open(d / "r-llama" / "export" / "summary.json"))["verify"]
    assert verify["passed"] and verify["bytes_equal"], verify
    # The export is the refitted file, exactly (fp32).
    refit = load_file(d / "r-llama" / "calibrate" / "weights.safetensors")
    exported = load_file(slim_dir / "model.safetensors")
    assert refit.keys() == exported.keys()
    for k in refit:
        assert torch.equal(refit[k], exported[k]), k
    dense = transformers.AutoModelForCausalLM.from_pretrained(d / "llama", dtype=torch.float32).eval()
    slim = transformers.AutoModelForCausalLM.from_pretrained(slim_dir, dtype=torch.float32).eval()
    ids = windows(d, SAMPLES)
    for layer in range(3):
        for which in ("attn", "mlp"):
            want, got = independent_refit(dense, slim, ids, layer, which)
            rel = ((want - got).norm() / want.norm()).item()
            assert rel < 1e-3, (layer, which, rel)
    # And the calibrated slice (no refit) is not that solution: the test can fail. The refit alone (no scale
    # steps: it is the calibrated student) lowers the 0/1 masks' held-out KL.
    mpirun(2, write_config(d, "r-off"))
    off_summary = json.load(open(d / "r-off" / "calibrate" / "summary.json"))
    assert summary["heldout_kl_masks"] == off_summary["heldout_kl_masks"], (summary, off_summary)
    assert summary["heldout_kl_calibrated"] < off_summary["heldout_kl_masks"], (summary, off_summary)
    off = transformers.AutoModelForCausalLM.from_pretrained(d / "r-off" / "export" / "slim", dtype=torch.float32)
    want, got = independent_refit(dense, off.eval(), ids, 2, "mlp")
    assert ((want - got).norm() / want.norm()).item() > 1e-2


def test_refit_that_cannot_fit_says_so_before_it_starts(setup, mpirun):
    """Issue 37 drill 6 (LLaMA-3.2-1B's refit peaked at 11.6 GiB a rank): on a rehearsed small node
    (HAWADA_HOST_MEMORY_BYTES stands in for MemAvailable) a refit that cannot fit is a ConfigError before it starts,
    saying what it would need and the key that lowers it; the same run without the refit fits and finishes."""
    d = setup
    small = {"HAWADA_HOST_MEMORY_BYTES": "20000"}  # 10 KB a rank: less than the tiny model in fp32
    p = mpirun(2, write_config(d, "r-mem", calibrate="reconstruct = true", steps=0), env=small, check=False)
    assert p.returncode == 2, p.stderr
    assert "ConfigError" in p.stderr and "calibrate would need about" in p.stderr, p.stderr
    assert "the refit's dense model in fp32" in p.stderr and "calibrate.reconstruct = false" in p.stderr
    assert "for its 2 rank(s)" in p.stderr and "reconstruct: layer" not in p.stderr
    assert not (d / "r-mem" / "stages" / "calibrate.done").exists()
    # Without the refit calibrate fits; evaluate (rank 0 alone, the dense model and one student in fp32) then refuses
    # before it loads anything, with the export already complete, and the rerun on a node with memory reuses every
    # stage before it and finishes (drill 6 saw evaluate hold 17 GiB on rank 0 unchecked).
    p = mpirun(2, write_config(d, "r-mem-off", steps=0), env=small, check=False)
    assert (d / "r-mem-off" / "stages" / "calibrate.done").exists()
    assert p.returncode == 2, p.stderr
    assert "evaluate would need about" in p.stderr and "for its 1 rank(s)" in p.stderr, p.stderr
    assert "the dense model in fp32" in p.stderr and "is complete" in p.stderr, p.stderr
    assert (d / "r-mem-off" / "stages" / "export.done").exists()
    assert not (d / "r-mem-off" / "stages" / "evaluate.done").exists()
    p = mpirun(2, write_config(d, "r-mem-off", steps=0))
    assert (d / "r-mem-off" / "stages" / "evaluate.done").exists()
    assert "export: skipped, its marker matches" in p.stderr, p.stderr


def test_two_ranks_equal_one_rank(setup, mpirun):
    d = setup
    # Every stage of the 1-rank run accumulates twice what each of the 2 ranks does; the refit's Gram matrices
    # are summed in another order, so equal to fp64 summation order, not bit for bit.
    mpirun(1, write_config(d, "r-one", calibrate="reconstruct = true\ngrad_accum = 2", heal="steps = 0", accum=2))
    mpirun(2, write_config(d, "r-two", calibrate="reconstruct = true"))
    a = load_file(d / "r-one" / "calibrate" / "weights.safetensors")
    b = load_file(d / "r-two" / "calibrate" / "weights.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=k)


def test_gpt_neox_biases_are_refitted_and_heal_starts_from_the_refit(setup, mpirun):
    d = setup
    mpirun(2, write_config(d, "r-neox", model="neox", calibrate="reconstruct = true", gates="", budget=NEOX_BUDGET))
    r = json.load(open(d / "r-neox" / "calibrate" / "summary.json"))["reconstruct"]
    # The plan cuts FFN channels in both blocks and keeps every head: the two MLP output projections are refitted,
    # the attention's (nothing to reconstruct) keep their fitted scales, as a run without the refit leaves them.
    plan = json.load(open(d / "r-neox" / "plan" / "plan.json"))
    assert [(len(b["heads"]), len(b["ffn"]) < 64) for b in plan["layers"]] == [(4, True), (4, True)], plan["layers"]
    assert (r["projections"], r["attention_projections"], r["mlp_projections"]) == (2, 0, 2), r
    card = (d / "r-neox" / "export" / "slim" / "README.md").read_text()
    assert "the output projections of the blocks whose heads or FFN channels were cut (0 o_proj, 2 down_proj)" \
        in card, card
    mpirun(2, write_config(d, "r-neox-off", model="neox", gates="", budget=NEOX_BUDGET))
    on = load_file(d / "r-neox" / "export" / "slim" / "model.safetensors")
    off = load_file(d / "r-neox-off" / "export" / "slim" / "model.safetensors")
    for layer in range(2):
        n = f"gpt_neox.layers.{layer}.mlp.dense_4h_to_h"
        assert not torch.equal(on[n + ".bias"], off[n + ".bias"]), n
        assert not torch.equal(on[n + ".weight"], off[n + ".weight"]), n
    for n in ("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "gpt_neox.layers.1.attention.query_key_value.weight",
              "gpt_neox.layers.0.attention.dense.weight", "gpt_neox.layers.1.attention.dense.bias"):
        assert torch.equal(on[n], off[n]), n  # only the refitted output projections move
    slim = transformers.AutoModelForCausalLM.from_pretrained(d / "r-neox" / "export" / "slim", dtype=torch.float32)
    assert torch.isfinite(slim(input_ids=windows(d, 2)).logits).all()
    # A heal that trains nothing but the norms starts from the refitted projections and keeps them.
    mpirun(2, write_config(d, "r-neox-heal", model="neox", calibrate="reconstruct = true", gates="", budget=NEOX_BUDGET,
                           heal='steps = 2\nlr = 0.001\nwarmup = 1\ntrain = "norm"'))
    healed = load_file(d / "r-neox-heal" / "heal" / "weights.safetensors")
    torch.testing.assert_close(healed["gpt_neox.layers.0.mlp.dense_4h_to_h.weight"],
                               on["gpt_neox.layers.0.mlp.dense_4h_to_h.weight"], rtol=0, atol=0)



def test_mlp_only_refit_leaves_the_attention_output_as_sliced(setup, mpirun):
    d = setup
    mpirun(2, write_config(d, "r-mlp", calibrate="reconstruct = true\nreconstruct_attention = false", steps=0))
    mpirun(2, write_config(d, "r-masks", steps=0))
    assert json.load(open(d / "r-mlp" / "calibrate" / "summary.json"))["reconstruct"]["projections"] == 3
    mlp = load_file(d / "r-mlp" / "export" / "slim" / "model.safetensors")
    masks = load_file(d / "r-masks" / "export" / "slim" / "model.safetensors")
    for layer in range(3):
        o, down = f"model.layers.{layer}.self_attn.o_proj.weight", f"model.layers.{layer}.mlp.down_proj.weight"
        assert torch.equal(mlp[o], masks[o]), o
        assert not torch.equal(mlp[down], masks[down]), down


def test_refit_after_the_scales_keeps_the_attention_scales_and_solves_the_mlp(setup, mpirun):
    d = setup
    # The default order: the scales are fitted on the 0/1-mask student first (as without the refit), then the MLP
    # down projections are solved on the inputs that the scaled attention gives them; the attention keeps its scales.
    mpirun(2, write_config(d, "r-after", calibrate="reconstruct = true\nreconstruct_attention = false"))
    mpirun(2, write_config(d, "r-plain"))
    summary = json.load(open(d / "r-after" / "calibrate" / "summary.json"))
    plain = json.load(open(d / "r-plain" / "calibrate" / "summary.json"))
    assert summary["reconstruct"]["order"] == "after_scales" and summary["reconstruct"]["projections"] == 3, summary
    # The 0/1-mask KL is the dense model's, measured after the refit: the refit wrote no memory the dense model
    # shares (an fp32 checkpoint is mapped, and the loaded model views it).
    assert summary["heldout_kl_masks"] == pytest.approx(plain["heldout_kl_masks"], rel=1e-9), (summary, plain)
    assert summary["heldout_kl_calibrated"] < summary["heldout_kl_masks"], summary
    after_scales, plain_scales = load_file(d / "r-after" / "calibrate" / "scales.safetensors"), \
        load_file(d / "r-plain" / "calibrate" / "scales.safetensors")
    assert torch.equal(after_scales["heads"], plain_scales["heads"])
    assert torch.equal(after_scales["attn_out"], plain_scales["attn_out"])
    assert torch.all(after_scales["ffn"][plain_scales["ffn"] != 0] == 1) and torch.all(after_scales["mlp_out"] == 1)
    assert not torch.all(plain_scales["ffn"][plain_scales["ffn"] != 0] == 1)  # the plain run's are fitted
    after = load_file(d / "r-after" / "export" / "slim" / "model.safetensors")
    plain_w = load_file(d / "r-plain" / "export" / "slim" / "model.safetensors")
    slim_dir = d / "r-after" / "export" / "slim"
    dense = transformers.AutoModelForCausalLM.from_pretrained(d / "llama", dtype=torch.float32).eval()
    slim = transformers.AutoModelForCausalLM.from_pretrained(slim_dir, dtype=torch.float32).eval()
    ids = windows(d, SAMPLES)
    for layer in range(3):
        o, down = f"model.layers.{layer}.self_attn.o_proj.weight", f"model.layers.{layer}.mlp.down_proj.weight"
        assert torch.equal(after[o], plain_w[o]), o  # sliced with the same fitted scales folded
        want, got = independent_refit(dense, slim, ids, layer, "mlp")
        assert ((want - got).norm() / want.norm()).item() < 1e-3, layer


@torch.no_grad()
def block_outputs(model, ids):
    """The residual stream leaving every decoder layer (before the final norm), by forward hooks."""
    outs = []
    hooks = [layer.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.model.layers]
    model(input_ids=ids)
    for h in hooks:
        h.remove()
    return outs


def test_refit_spans_hands_the_next_kept_block_the_teachers_stream(setup, mpirun):
    """calibrate.refit_spans: the kept block before a span of dropped blocks refits its down projection so that the
    stream it hands on is the teacher's at the span's end: on windows the refit did not see, the export's stream there
    (transformers) is closer to the dense model's than the plain cut's, and nothing else changes."""
    d = setup
    # Least squares of 65 inputs (64 FFN channels and the constant) needs a few thousand tokens to generalise.
    np.random.default_rng(2).integers(0, VOCAB, size=256 * SEQ).astype(np.uint16).tofile(d / "more.bin")
    gates = "heads = false\nffn = false\nhidden = false\nlayers = true"
    budget = 'metric = "non_embedding_params"\ntarget = 0.5'
    common = dict(model="deep", gates=gates, budget=budget, steps=0, tokens="more.bin", samples=192)
    p = mpirun(2, write_config(d, "s-spans", **common))
    mpirun(2, write_config(d, "s-plain", calibrate="refit_spans = false", **common))
    plan = json.load(open(d / "s-spans" / "plan" / "plan.json"))
    assert plan["kept_layers"] == json.load(open(d / "s-plain" / "plan" / "plan.json"))["kept_layers"]
    kept = plan["kept_layers"]
    r = json.load(open(d / "s-spans" / "calibrate" / "summary.json"))["reconstruct"]
    # The spans: (kept block, the last dropped block after it), in dense indices.
    ends = [(k, (kept[j + 1] - 1) if j + 1 < len(kept) else 4) for j, k in enumerate(kept)]
    spans = [(j, k, e) for j, (k, e) in enumerate(ends) if e > k]
    assert 2 <= len(kept) <= 3 and spans, kept
    assert r["span_projections"] == len(spans) == r["projections"] == r["mlp_projections"], r
    assert "to the end of the span of blocks" in p.stderr
    dense = transformers.AutoModelForCausalLM.from_pretrained(d / "deep", dtype=torch.float32).eval()
    on = transformers.AutoModelForCausalLM.from_pretrained(d / "s-spans" / "export" / "slim", dtype=torch.float32)
    off = transformers.AutoModelForCausalLM.from_pretrained(d / "s-plain" / "export" / "slim", dtype=torch.float32)
    all_ids = torch.from_numpy(np.fromfile(d / "more.bin", dtype=np.uint16).astype(np.int64)).view(256, SEQ)
    ids = all_ids[192:248]
    teacher = block_outputs(dense, ids)
    got_on, got_off = block_outputs(on.eval(), ids), block_outputs(off.eval(), ids)
    for j, k, e in spans:
        t = teacher[e]
        err_on = ((got_on[j] - t).norm() / t.norm()).item()
        err_off = ((got_off[j] - t).norm() / t.norm()).item()
        print(f"kept block {k} standing for blocks {k + 1}-{e}: relative error {err_off:.4f} plain, {err_on:.4f} refit")
        assert err_on < 0.97 * err_off, (j, err_on, err_off)
    # The refit is the least-squares solution of the normal equations transformers gives on the calibration windows:
    # the plain cut's FFN activations of the block, against the dense stream at the span's end minus the stream the
    # MLP output is added to.
    for j, k, e in spans:
        want = independent_span_refit(dense, off.eval(), all_ids[:192], j, e)
        got = on.model.layers[j].mlp.down_proj.weight.double()
        rel = ((want - got).norm() / want.norm()).item()
        print(f"kept block {k}: refit against an independent solve: relative difference {rel:.2e}")
        assert rel < 1e-3, (j, rel)
    # Only the down projections of the blocks before spans differ from the plain cut's.
    a = load_file(d / "s-spans" / "export" / "slim" / "model.safetensors")
    b = load_file(d / "s-plain" / "export" / "slim" / "model.safetensors")
    changed = sorted(n for n in a if not torch.equal(a[n], b[n]))
    assert changed == sorted(f"model.layers.{j}.mlp.down_proj.weight" for j, _, _ in spans), changed


@torch.no_grad()
def independent_span_refit(dense, plain, ids, j, end):
    """The ridge least-squares down projection of the plain cut's block j that makes the stream leaving it the dense
    model's after block `end`, from activations transformers computes."""
    layer = plain.model.layers[j]
    store = {}
    h1 = layer.mlp.register_forward_pre_hook(lambda m, a: store.update(x=a[0]))
    h2 = layer.register_forward_hook(lambda m, a, o: store.update(out=o[0] if isinstance(o, tuple) else o))
    inputs, bases = [], []
    for start in range(0, len(ids), 32):
        plain(input_ids=ids[start:start + 32])
        mlp = layer.mlp
        x = store["x"]
        a = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        inputs.append(a.reshape(-1, a.shape[-1]))
        bases.append((store["out"] - mlp(x)).reshape(-1, x.shape[-1]))  # the stream the MLP output is added to
    h1.remove()
    h2.remove()
    target = torch.cat([o.reshape(-1, o.shape[-1]) for o in
                        (block_outputs(dense, ids[s:s + 32])[end] for s in range(0, len(ids), 32))]) - torch.cat(bases)
    a = torch.cat(inputs).double()
    g = a.T @ a
    g += RIDGE * g.diagonal().mean() * torch.eye(g.shape[0], dtype=torch.float64)
    return torch.linalg.solve(g, a.T @ target.double()).T
