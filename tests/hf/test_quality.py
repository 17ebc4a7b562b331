"""The real pretrained SmolLM2-135M end to end on a small budget (issue 11 and 12): the whole pipeline
(teacher cache, gates, probed search, calibration, heal, export, evaluate, report) on 2 ranks, then with
transformers as the independent reference:
- ours beats the one-shot magnitude baseline at the exported shape, and the calibrated student beats the
  0/1 masks on held-out KL;
- heal lowers the held-out KL below the unhealed student's;
- evaluate's numbers are finite and equal a Python recomputation; the model card is there;
- transformers loads the export and generate() writes text;
- verify: the right export passes the bf16 tolerance; a wrong slice fails it and nothing is published.
The data is 96 windows of 128 tokens of English prose (launch/real_data.py), the last 16 held out.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "..", "..", "bench", "quality_reference.py")
SEQ, WINDOWS, HOLDOUT = 128, 96, 16


def write_config(d, model, data, run, extra=""):
    p = d / f"{run}.toml"
    p.write_text(f"""
[run]
dir = "{d / run}"
threads_per_rank = 1
[model]
path = "{model}"
dtype = "bf16"
[data]
format = "tokens_h5"
path = "{data}"
seq_len = {SEQ}
[teacher]
cache_root = "{d / 'cache'}"
top_k = 32
[train]
steps = 6
warmup = 3
micro_batch = 2
holdout = {HOLDOUT}
importance_batches = 4
checkpoint_every = 100
[budget]
metric = "params"
target = 0.7
[search]
ffn_multiple = 128
probe_shapes = 2
probe_steps = 2
probe_samples = 4
[calibrate]
steps = 12
{extra}
""")
    return p


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, smollm2, mpirun):
    d = tmp_path_factory.mktemp("real")
    with h5py.File(smollm2["train"], "r") as f:
        ids = f["input_ids"][: WINDOWS // 2].reshape(WINDOWS, SEQ)
    with h5py.File(d / "tokens.h5", "w") as f:
        f["input_ids"] = ids
    cfg = write_config(d, smollm2["model"], d / "tokens.h5", "run", """
[heal]
steps = 12
lr = 0.0002
warmup = 2
eval_every = 6
""")
    p = mpirun(2, cfg, timeout=1200)
    return d, cfg, p


def python_ppl(model_dir, tokens, first, count):
    out = subprocess.run([sys.executable, REFERENCE, "ppl", str(model_dir), str(tokens), "--first", str(first),
                          "--samples", str(count)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_real_model_end_to_end(real_run, smollm2, tmp_path):
    d, _, p = real_run
    run = d / "run"
    export = run / "export" / "slim"
    summary = json.load(open(run / "export" / "summary.json"))
    v = summary["verify"]
    assert v["passed"] and summary["healed"] and v["bytes_equal"] and v["finite"], v

    # The probes measured different shapes; the chosen one is among them.
    plan = json.load(open(run / "plan" / "plan.json"))
    assert len(plan["probes"]) == 2 and all(math.isfinite(x["kl"]) for x in plan["probes"])
    best = min(plan["probes"], key=lambda x: x["kl"])
    assert best["num_attention_heads"] == plan["shape"]["num_attention_heads"]

    # Calibration lowered the held-out KL of the 0/1 masks; heal lowered it further.
    cal = json.load(open(run / "calibrate" / "summary.json"))
    assert cal["heldout_kl_calibrated"] < cal["heldout_kl_masks"], cal
    ev = summary["evaluate"]
    assert ev["export"]["kl"] < ev["unhealed"]["kl"], ev
    heal = [json.loads(l) for l in open(run / "heal" / "metrics.jsonl")]
    assert [m["step"] for m in heal] == list(range(1, 13)) and "heldout_kl" in heal[-1]

    # evaluate agrees with transformers on the same held-out windows.
    q = ev["export"]
    for k in ("teacher_ppl", "student_ppl", "kl", "top1_agreement"):
        assert q[k] is not None and math.isfinite(q[k]), (k, q)
    ours = python_ppl(export, d / "tokens.h5", WINDOWS - HOLDOUT, HOLDOUT)
    dense = python_ppl(smollm2["model"], d / "tokens.h5", WINDOWS - HOLDOUT, HOLDOUT)
    assert abs(q["student_ppl"] / ours["ppl"] - 1) < 2e-3, (q, ours)
    assert abs(q["teacher_ppl"] / dense["ppl"] - 1) < 2e-3, (q, dense)
    assert ev["latency"]["dense_s"] > 0 and ev["latency"]["export_s"] > 0

    # Ours beats the one-shot magnitude baseline at the same shape.
    base = tmp_path / "magnitude"
    subprocess.run([sys.executable, REFERENCE, "baseline", "magnitude", smollm2["model"], str(export),
                    str(d / "tokens.h5"), str(base)], check=True, capture_output=True)
    mag = python_ppl(base, d / "tokens.h5", WINDOWS - HOLDOUT, HOLDOUT)
    print(f"held-out perplexity: dense {dense['ppl']:.2f}, ours {ours['ppl']:.2f}, magnitude {mag['ppl']:.2f}")
    assert ours["ppl"] < mag["ppl"]

    # A plain from_pretrained, a model card, and text out of generate().
    card = (export / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "library_name: transformers" in card and "hawada-pipeline" in card
    tok = transformers.AutoTokenizer.from_pretrained(export)
    model = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    x = tok("The Debian project", return_tensors="pt")
    y = model.generate(**x, max_new_tokens=8, do_sample=False)
    text = tok.decode(y[0][x["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(text.strip()) > 0
    assert (run / "report" / "index.html").exists()


def test_right_slice_passes_and_wrong_slice_fails_verify(real_run, mpirun):
    d, cfg, _ = real_run
    run = d / "run"
    # The same run without heal: the export is the calibrated slice, verified against the hard-gated student.
    plain = d / "plain.toml"
    plain.write_text(cfg.read_text().replace("[heal]\nsteps = 12", "[heal]\nsteps = 0"))
    mpirun(2, plain, timeout=900)
    v = json.load(open(run / "export" / "summary.json"))["verify"]
    assert v["passed"] and v["identity_relative_l2"] < v["identity_tolerance"] and v["bytes_equal"], v
    before = (run / "export" / "slim" / "model.safetensors").read_bytes()
    p = mpirun(2, plain, "--force", "export", env={"HAWADA_FAULT": "export.wrong_slice@0:flag,export.wrong_slice@1:flag"},
               check=False, timeout=600)
    assert p.returncode == 1 and "CheckpointError" in p.stderr and "was not published" in p.stderr, p.stderr
    failed = json.load(open(run / "export" / "failed-summary.json"))["verify"]
    assert not failed["passed"] and failed["identity_relative_l2"] > 100 * failed["identity_tolerance"], failed
    assert (run / "export" / ".slim.failed").is_dir()
    # The earlier, verified export is untouched under the final name.
    assert (run / "export" / "slim" / "model.safetensors").read_bytes() == before
    assert not (run / "stages" / "export.done").exists()
