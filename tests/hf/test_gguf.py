"""export.gguf (issue 36): GGUF files beside the export, made by llama.cpp's own converter and llama-quantize.

A tiny LLaMA with GQA (4 query heads, 2 kv heads) and a real tokenizer (SmolLM2-135M's, so the converter can
write the vocabulary) loses a block (gates.layers, a decode budget whose per-block cost dominates) and is exported
as F16 and Q8_0 GGUF files; both load in llama.cpp (llama-completion), and the F16 file's predictions agree with
transformers' on the Hugging Face export (llama-perplexity --kl-divergence against transformers' log-probabilities
on the same windows: bench/llamacpp.py's machinery). A type outside the list and a missing llama.cpp are
ConfigErrors naming the key, before any work; a converter that fails is a RuntimeToolError with its output.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import MODELS, REPO

transformers = pytest.importorskip("transformers")

LLAMA_CPP = os.path.join(REPO, ".llama.cpp")
QUANTIZE = os.path.join(LLAMA_CPP, "build", "bin", "llama-quantize")
SOURCES = sorted(glob.glob(os.path.join(LLAMA_CPP, "src", "*", "vendor", "llama.cpp")))
TOKENIZER = os.path.join(MODELS, "smollm2-135m")
VOCAB, SEQ, LAYERS = 49152, 16, 4
PYTHON = sys.executable  # the project venv's: torch, transformers, gguf, sentencepiece

needs_llama_cpp = pytest.mark.skipif(
    not os.path.exists(QUANTIZE) or not SOURCES,
    reason=f"{QUANTIZE} missing: run bash launch/llama_cpp.sh (launch/setup.sh runs it)")


def write_config(d, run, export, budget="", target=0.6):
    p = d / f"{run}.toml"
    p.write_text(f"""
[run]
dir = "{d / run}"
threads_per_rank = 1
seed = 5
[model]
path = "{d / 'llama'}"
dtype = "fp32"
[data]
format = "tokens_bin"
path = "{d / 'tokens.bin'}"
seq_len = {SEQ}
[teacher]
cache_root = "{d / 'cache'}"
top_k = 32
[gates]
hidden = false
layers = true
[train]
steps = 6
warmup = 2
micro_batch = 4
holdout = 8
importance_batches = 2
[budget]
metric = "latency"
latency_mode = "decode"
decode_context = 16
layer_overhead_s = 1e-3
target = {target}
{budget}
[search]
ffn_multiple = 32
probe_shapes = 1
[export]
dtype = "fp32"
{export}
""")
    return p


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    for f in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        if not os.path.exists(os.path.join(TOKENIZER, f)):
            pytest.skip(f"{TOKENIZER}/{f} missing: run launch/setup.sh (launch/real_models.py)")
    d = tmp_path_factory.mktemp("gguf")
    real = json.load(open(os.path.join(TOKENIZER, "config.json")))
    torch.manual_seed(0)
    # initializer_range 0.3: logits spread over a few units, so a wrong conversion shows in the KL divergence.
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                                      tie_word_embeddings=True, bos_token_id=real["bos_token_id"],
                                      eos_token_id=real["eos_token_id"], max_position_embeddings=512)
    transformers.LlamaForCausalLM(config).save_pretrained(d / "llama")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER, f), d / "llama" / f)
    np.random.default_rng(0).integers(0, VOCAB, size=48 * SEQ).astype(np.uint16).tofile(d / "tokens.bin")
    return d


def llama_tool(name):
    return os.path.join(LLAMA_CPP, "build", "bin", name)


@needs_llama_cpp
def test_gqa_depth_cut_exports_f16_and_q8_0_that_llama_cpp_loads_and_agrees(setup, mpirun, capsys):
    d = setup
    cfg = write_config(d, "run", f'gguf = ["f16", "q8_0"]\nllama_cpp = "{SOURCES[-1]}"\npython = "{PYTHON}"')
    mpirun(2, cfg, timeout=900)
    export_dir = d / "run" / "export"
    slim = export_dir / "slim"
    hf = json.load(open(slim / "config.json"))
    assert hf["num_hidden_layers"] < LAYERS and hf["num_key_value_heads"] == 2, hf
    summary = json.load(open(export_dir / "summary.json"))
    assert summary["verify"]["passed"]
    files = {g["type"]: g for g in summary["gguf"]}
    assert list(files) == ["f16", "q8_0"], summary["gguf"]
    for t, g in files.items():
        assert g["file"] == str(export_dir / "slim-gguf" / f"slim-{t}.gguf")
        assert g["bytes"] == os.path.getsize(g["file"]) > 0
    assert sorted(os.listdir(export_dir / "slim-gguf")) == ["slim-f16.gguf", "slim-q8_0.gguf"]
    assert not [f for f in os.listdir(export_dir) if f.endswith(".partial")], os.listdir(export_dir)
    assert (export_dir / "slim-gguf.logs" / "convert.log").exists()

    # The GGUF describes the cut model: its blocks, GQA, tied embeddings (no output.weight).
    import gguf
    reader = gguf.GGUFReader(files["f16"]["file"])
    assert reader.fields["llama.block_count"].contents() == hf["num_hidden_layers"]
    assert reader.fields["llama.attention.head_count"].contents() == 4
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names and f"blk.{hf['num_hidden_layers'] - 1}.ffn_down.weight" in names
    assert f"blk.{hf['num_hidden_layers']}.attn_q.weight" not in names

    # Both files load and generate in llama.cpp.
    for g in files.values():
        p = subprocess.run([llama_tool("llama-completion"), "-m", g["file"], "-p", "The capital of France is", "-n",
                            "4", "--temp", "0", "-no-cnv", "--no-warmup", "-t", "1", "-c", "64"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-3000:]

    # F16 against transformers (fp32) on the HF export, on the same 256-token windows (bench/llamacpp.py's ppl).
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import llamacpp
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, VOCAB, size=(4, 256)).astype(np.int64))
    (d / "ppl").mkdir()
    capsys.readouterr()
    with torch.no_grad():  # as llamacpp.ppl_cmd calls it
        llamacpp.score(argparse.Namespace(model=str(slim), ggufs=[files["f16"]["file"]], threads=1), ids,
                       str(d / "ppl"))
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    hf_row, llama_row = rows
    with capsys.disabled():
        print("\n" + json.dumps(rows))
    assert abs(llama_row["ppl_half_vs_transformers"] - 1) < 0.01, rows
    assert llama_row["kld"] < 1e-3 and llama_row["same_top_percent"] > 95, rows


@needs_llama_cpp
def test_evaluate_in_llama_cpp_measures_each_type_against_the_original(setup, mpirun):
    """evaluate.runtimes = [..., "llama.cpp"]: the original converted and quantized like the export, both measured
    by llama-bench and llama-perplexity on the run's held-out windows; the fp32 reference equals transformers', the
    F16 files' perplexity in llama.cpp is within 1% of it. (Resumes the first test's run at the evaluate stage.)"""
    d = setup
    # llama-perplexity summarises 100 predictions or more: 16 windows of 16 tokens give 16 x 7.
    np.random.default_rng(2).integers(0, VOCAB, size=16 * SEQ).astype(np.uint16).tofile(d / "eval.bin")
    evaluate = f'\n[evaluate]\nruntimes = ["libtorch", "llama.cpp"]\nthreads = 1\ndata = "{d / "eval.bin"}"'
    cfg = write_config(d, "run", f'gguf = ["f16", "q8_0"]\nllama_cpp = "{SOURCES[-1]}"\npython = "{PYTHON}"{evaluate}')
    mpirun(2, cfg, timeout=900)
    ev = json.load(open(d / "run" / "evaluate" / "evaluate.json"))
    assert "generation" in ev and "latency" in ev  # libtorch still measured
    l = ev["llama_cpp"]
    with_half = SEQ - 1 - SEQ // 2
    assert (l["windows"], l["window_tokens"], l["predictions"], l["threads"]) == (16, SEQ, 16 * with_half, 1), l
    # decode is timed after the prompt (a KV cache of it), in its own llama-bench run
    assert l["decode_context"] == l["prompt_tokens"] == 256, l
    decode_rows = json.load(open(d / "run" / "evaluate" / "llama.cpp" / "bench-decode.json"))
    assert {r["n_depth"] for r in decode_rows} == {256} and all(r["n_gen"] == 64 for r in decode_rows), decode_rows
    assert [t["type"] for t in l["types"]] == ["f16", "q8_0"], l["types"]

    # The fp32 reference against transformers on the same windows.
    ids = torch.from_numpy(np.fromfile(d / "eval.bin", dtype=np.uint16).astype(np.int64).reshape(-1, SEQ))
    for model_dir, key in ((d / "llama", "original_ppl"), (d / "run" / "export" / "slim", "export_ppl")):
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
        nll = -lp[:, SEQ // 2:SEQ - 1].gather(-1, ids[:, SEQ // 2 + 1:, None]).mean().item()
        assert abs(np.exp(nll) / l["fp32"][key] - 1) < 1e-4, (key, np.exp(nll), l["fp32"])

    f16, q8 = l["types"]
    assert abs(f16["original"]["ppl"] / l["fp32"]["original_ppl"] - 1) < 0.01, l
    assert abs(f16["export"]["ppl"] / l["fp32"]["export_ppl"] - 1) < 0.01, l
    assert f16["original"]["kld_to_fp32_original"] < 1e-3 and f16["original"]["same_top_as_fp32_original"] > 0.95, l
    for t in (f16, q8):
        assert abs(t["ppl_ratio"] - t["export"]["ppl"] / t["original"]["ppl"]) < 1e-9
        assert t["export"]["bytes"] < t["original"]["bytes"], t
        for who in ("original", "export"):
            assert t[who]["decode_tokens_per_s"] > 0 and t[who]["prefill_tokens_per_s"] > 0, t
        assert t["decode_speedup"] == t["export"]["decode_tokens_per_s"] / t["original"]["decode_tokens_per_s"]
    assert q8["original"]["bytes"] < f16["original"]["bytes"]
    assert not (d / "run" / "evaluate" / "llama.cpp" / "original-fp32.kld").exists()  # 2 bytes a vocab entry: gone
    card = (d / "run" / "export" / "slim" / "README.md").read_text()
    assert "## llama.cpp" in card and "`slim-q8_0.gguf`" in card and "| q8_0 |" in card, card


def test_bad_type_is_a_config_error_naming_export_gguf(setup, cli):
    cfg = write_config(setup, "bad-type", f'gguf = ["f16", "q5_k"]\nllama_cpp = "{setup}"')
    p = cli("validate", cfg, check=False)
    assert p.returncode != 0
    assert "ConfigError" in p.stderr and "export.gguf: unknown value" in p.stderr and '"q5_k"' in p.stderr, p.stderr


def test_bad_evaluate_runtimes_is_a_config_error_naming_it(setup, cli, tmp_path):
    for export, said in (('\n[evaluate]\nruntimes = ["llama.cpp"]', '"llama.cpp" needs export.gguf'),
                         ('\n[evaluate]\nruntimes = ["vllm"]', 'evaluate.runtimes: unknown value'),
                         # a llama.cpp directory with the converter but no llama-bench anywhere
                         (f'gguf = ["f16"]\nllama_cpp = "{tmp_path}"\n[evaluate]\nruntimes = ["llama.cpp"]',
                          '"llama.cpp" needs llama-bench')):
        (tmp_path / "convert_hf_to_gguf.py").write_text("raise SystemExit('never run')\n")
        p = subprocess.run([os.environ["HAWADA_CLI"], "validate", str(write_config(setup, "bad-eval", export))],
                           capture_output=True, text=True, env={**os.environ, "PATH": "/usr/bin:/bin"}, timeout=120)
        assert p.returncode != 0 and "ConfigError" in p.stderr and "evaluate.runtimes" in p.stderr, p.stderr
        assert said in p.stderr, p.stderr


def test_missing_llama_cpp_is_a_config_error_naming_the_key(setup, cli, tmp_path):
    # No directory given, a directory without the converter: at validation, naming export.llama_cpp.
    for export in ('gguf = ["f16"]', f'gguf = ["f16"]\nllama_cpp = "{tmp_path}"'):
        p = cli("validate", write_config(setup, "no-llama", export), check=False)
        assert p.returncode != 0 and "ConfigError" in p.stderr and "export.llama_cpp" in p.stderr, p.stderr
    # A converter but no llama-quantize for q8_0 (none in build/bin/, the directory or PATH): when the run starts.
    (tmp_path / "convert_hf_to_gguf.py").write_text("raise SystemExit('never run')\n")
    # (Run "broken": the next test resumes it at the export stage.)
    cfg = write_config(setup, "broken", f'gguf = ["q8_0"]\nllama_cpp = "{tmp_path}"')
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    p = subprocess.run([os.environ["HAWADA_CLI"], str(cfg)], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode != 0 and "ConfigError" in p.stderr, p.stderr[-3000:]
    assert "export.llama_cpp: no llama-quantize" in p.stderr, p.stderr[-3000:]


def test_broken_converter_is_a_runtime_tool_error_with_its_output(setup, cli, tmp_path):
    # The converter exits 1 with a message: the run stops with its status and output, the HF export published.
    # (After the previous test, the run resumes at the export stage: the export keys are export's inputs only.)
    (tmp_path / "convert_hf_to_gguf.py").write_text(
        "import sys\nprint('converter: this model is not supported', file=sys.stderr)\nsys.exit(1)\n")
    cfg = write_config(setup, "broken", f'gguf = ["f16"]\nllama_cpp = "{tmp_path}"\npython = "{PYTHON}"')
    p = cli(cfg, check=False)
    assert p.returncode != 0
    assert "RuntimeToolError" in p.stderr and "export: gguf: converting the export to GGUF" in p.stderr, p.stderr
    assert "exited with status 1" in p.stderr and "converter: this model is not supported" in p.stderr, p.stderr
    export_dir = setup / "broken" / "export"
    assert (export_dir / "slim" / "config.json").exists()
    assert not (export_dir / "slim-gguf").exists() and not (export_dir / ".slim-gguf.partial").exists()
    assert not (setup / "broken" / "stages" / "export.done").exists()


@needs_llama_cpp
def test_gemma3_depth_cut_gets_its_layer_pattern(tmp_path, mpirun):
    """Gemma 3: the converter writes no per-layer attention pattern, and llama.cpp's every-6th default is wrong for
    a cut model; the export's GGUF carries the pattern of its own layer_types (runtimes/gguf_layer_pattern.py)."""
    gemma = os.path.join(MODELS, "gemma-3-270m")
    if not os.path.exists(os.path.join(gemma, "tokenizer.json")):
        pytest.skip(f"{gemma}/tokenizer.json missing: run launch/setup.sh (launch/real_models.py)")
    real = json.load(open(os.path.join(gemma, "config.json")))
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=real["vocab_size"], hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=8, max_position_embeddings=512,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
        bos_token_id=real["bos_token_id"], eos_token_id=real["eos_token_id"], pad_token_id=real["pad_token_id"],
        initializer_range=0.3, tie_word_embeddings=True)
    transformers.Gemma3ForCausalLM(config).save_pretrained(tmp_path / "llama")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(gemma, f), tmp_path / "llama" / f)
    np.random.default_rng(0).integers(0, 60000, size=48 * SEQ).astype(np.uint16).tofile(tmp_path / "tokens.bin")
    cfg = write_config(tmp_path, "run", f'gguf = ["f16"]\nllama_cpp = "{SOURCES[-1]}"\npython = "{PYTHON}"')
    mpirun(2, cfg, timeout=900)
    export_dir = tmp_path / "run" / "export"
    hf = json.load(open(export_dir / "slim" / "config.json"))
    assert hf["num_hidden_layers"] < LAYERS and len(hf["layer_types"]) == hf["num_hidden_layers"], hf
    import gguf
    f16 = export_dir / "slim-gguf" / "slim-f16.gguf"
    reader = gguf.GGUFReader(str(f16))
    assert reader.fields["gemma3.block_count"].contents() == hf["num_hidden_layers"]
    pattern = reader.fields["gemma3.attention.sliding_window_pattern"].contents()
    assert pattern == [t == "sliding_attention" for t in hf["layer_types"]], (pattern, hf["layer_types"])
    assert (export_dir / "slim-gguf.logs" / "layer-pattern.log").exists()
    p = subprocess.run([llama_tool("llama-completion"), "-m", str(f16), "-p", "Hello", "-n", "4", "--temp", "0",
                        "-no-cnv", "--no-warmup", "-t", "1", "-c", "64"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]


@needs_llama_cpp
def test_profile_in_llama_cpp_fits_the_decode_rates_that_a_run_prices_shapes_by(setup, cli, mpirun):
    """`profile --runtime llama.cpp`: cut copies of the model, converted and quantized by llama.cpp's tools, timed by
    llama-bench; the decode seconds fitted by least squares in the cost model's form (bytes / bandwidth + blocks x
    overhead). `budget.runtime = "llama.cpp"` prices the run's shapes by those rates: read from budget.rates, or
    measured by the run itself into <run>/budget/rates.json and reused by a rerun; a flipped bit is a typed error."""
    d = setup
    out = d / "rates.json"
    cli("profile", d / "llama", "--runtime", "llama.cpp", "--llama-cpp", SOURCES[-1], "--python", PYTHON,
        "--threads", "1", "--decode", "16", "--repeats", "2", "--out", out)
    r = json.load(open(out))
    assert (r["runtime"], r["gguf"], r["threads"], r["context"]) == ("llama.cpp", "q8_0", 1, 16), r
    shapes = r["shapes"]
    assert (shapes[0]["layers"], shapes[0]["heads"], shapes[0]["ffn"]) == (LAYERS, 4, 128), shapes[0]  # dense first
    assert len(shapes) >= 3 and len({s["layers"] for s in shapes}) >= 2, shapes
    assert r["device_bandwidth"] > 0 and r["layer_overhead_s"] >= 0, r
    for s in shapes:
        assert s["measured_s"] == pytest.approx(1 / s["decode_tokens_per_s"]) and s["fitted_s"] > 0, s
        gguf_file = d / "rates.json.work" / f"cut{shapes.index(s)}-gguf" / f"cut{shapes.index(s)}-q8_0.gguf"
        assert gguf_file.exists(), gguf_file
    assert r["max_fit_error"] == pytest.approx(max(abs(s["fitted_s"] / s["measured_s"] - 1) for s in shapes))
    # Least squares: the residuals are orthogonal to the regressors (bytes per step, blocks).
    B, o = r["device_bandwidth"], r["layer_overhead_s"]
    x = np.array([(s["fitted_s"] - o * s["layers"]) * B for s in shapes])
    res = np.array([s["measured_s"] - s["fitted_s"] for s in shapes])
    scale = np.abs(res).max() * np.abs(x).max() * len(shapes)
    assert abs(res @ x) < 1e-6 * scale, (res, x)
    if o > 0:
        layers = np.array([s["layers"] for s in shapes], float)
        assert abs(res @ layers) < 1e-6 * np.abs(res).max() * layers.max() * len(shapes), (res, layers)

    llama = f'llama_cpp = "{SOURCES[-1]}"\npython = "{PYTHON}"'
    # budget.rates: the run prices by the file's rates (in the resolved config), whatever [budget] said.
    # (The head of a 49,152-token vocabulary is most of this tiny model's llama.cpp time: a budget of 0.99.)
    cfg = write_config(d, "rates-given", llama, f'runtime = "llama.cpp"\nrates = "{out}"', target=0.99)
    mpirun(2, cfg, "--stages", "teacher_cache,train_gates,reduce_gates,rounding_search", timeout=900)
    resolved = (d / "rates-given" / "config.resolved.toml").read_text()
    assert f"device_bandwidth = {r['device_bandwidth']:.17g}"[:26] in resolved, resolved
    plan = json.load(open(d / "rates-given" / "plan" / "plan.json"))
    assert plan["metric"] == "latency", plan

    # No file: the run measures the rates itself (rank 0), and a rerun reuses them.
    cfg = write_config(d, "rates-own", llama, 'runtime = "llama.cpp"\nthreads = 1', target=0.99)
    p = mpirun(2, cfg, "--stages", "teacher_cache,train_gates", timeout=900)
    own = json.load(open(d / "rates-own" / "budget" / "rates.json"))
    assert own["threads"] == 1 and own["context"] == 16 and len(own["shapes"]) == len(shapes), own
    p = mpirun(2, cfg, "--stages", "teacher_cache,train_gates", timeout=900)
    assert "reusing llama.cpp's decode rates" in p.stderr + p.stdout, p.stderr[-3000:]

    # A flipped bit in a rates file: a typed error naming it, before any stage.
    text = out.read_text()
    out.write_text(text.replace(str(r["layer_overhead_s"])[:6], str(r["layer_overhead_s"] * 2)[:6], 1)
                   if r["layer_overhead_s"] > 0 else text.replace('"max_fit_error": ', '"max_fit_error": 1', 1))
    cfg = write_config(d, "rates-flipped", llama, f'runtime = "llama.cpp"\nrates = "{out}"')
    p = cli(cfg, check=False)
    assert p.returncode != 0 and "CheckpointError" in p.stderr and str(out) in p.stderr, p.stderr[-3000:]
    assert "checksum" in p.stderr, p.stderr[-3000:]
    # A file measured for another type or context: a ConfigError naming budget.rates.
    out.write_text(text)
    cfg = write_config(d, "rates-other", llama, f'runtime = "llama.cpp"\nrates = "{out}"\ngguf = "f16"')
    p = cli(cfg, check=False)
    assert p.returncode != 0 and "ConfigError" in p.stderr and "budget.rates" in p.stderr, p.stderr[-3000:]


def test_bad_budget_runtime_is_a_config_error_naming_the_key(setup, cli, tmp_path):
    llama = f'llama_cpp = "{SOURCES[-1]}"' if SOURCES else ""
    cases = (('runtime = "vllm"', "budget.runtime: unknown value"),
             ('runtime = "llama.cpp"\nlatency_mode = "prefill"', "budget.runtime"),
             ('rates = "/nonexistent/rates.json"', "budget.rates"),
             ('gguf = "f16"', "budget.gguf: applies only with budget.runtime"),
             ('runtime = "llama.cpp"\ngguf = "q5_k"', "budget.gguf: unknown value"),
             ('runtime = "llama.cpp"\nthreads = -1', "budget.threads"))
    for budget, said in cases:
        cfg = write_config(setup, "bad-runtime", llama, budget.replace('latency_mode = "prefill"', ""))
        if "prefill" in budget:  # [budget] of write_config says decode: this case writes its own
            cfg.write_text(cfg.read_text().replace('latency_mode = "decode"', 'latency_mode = "prefill"'))
        p = cli("validate", cfg, check=False)
        assert p.returncode != 0 and "ConfigError" in p.stderr and said in p.stderr, (budget, p.stderr)
    # llama.cpp without its tools: naming export.llama_cpp.
    cfg = write_config(setup, "bad-runtime", "", 'runtime = "llama.cpp"')
    p = cli("validate", cfg, check=False)
    assert p.returncode != 0 and "ConfigError" in p.stderr and "export.llama_cpp" in p.stderr, p.stderr
