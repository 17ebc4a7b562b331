"""End to end: the README's demo (configs/demo.toml and configs/demo-vit.toml, with the tool's own
make-model/make-data) under `mpirun -np 2`, in a temporary copy of the repo layout. The export
loads with transformers' Auto classes and the report opens in headless Chromium with its plots.
"""
import json
import os
import shutil
import subprocess

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def run_demo(tmp_path, cli, mpirun, config, arch):
    """The demo layout (configs/, demo/, runs/) under tmp_path, as launch/demo.sh makes it."""
    (tmp_path / "configs").mkdir()
    shutil.copy(os.path.join(REPO, "configs", config), tmp_path / "configs" / config)
    if arch == "llama":
        cli("make-model", "--arch", "llama", "--preset", "tiny", tmp_path / "demo" / "tiny-llama")
        cli("make-data", tmp_path / "demo" / "tiny-llama", "--samples", "512", "--seq-len", "64",
            tmp_path / "demo" / "tokens.h5")
    else:
        cli("make-model", "--arch", "vit", "--preset", "tiny", tmp_path / "demo" / "tiny-vit")
        cli("make-data", tmp_path / "demo" / "tiny-vit", "--samples", "512", tmp_path / "demo" / "images.h5")
    return mpirun(2, tmp_path / "configs" / config, timeout=600)


def dom_of(html):
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"file://{html}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("config,arch,auto", [("demo.toml", "llama", "AutoModelForCausalLM"),
                                              ("demo-vit.toml", "vit", "AutoModelForImageClassification")])
def test_demo_exports_a_loadable_model_and_a_report(tmp_path, cli, mpirun, config, arch, auto):
    p = run_demo(tmp_path, cli, mpirun, config, arch)
    run = tmp_path / "runs" / ("demo" if arch == "llama" else "demo-vit")
    for stage in ("teacher_cache", "train_gates", "reduce_gates", "rounding_search", "calibrate", "heal", "export",
                  "evaluate", "report"):
        assert (run / "stages" / f"{stage}.done").exists(), stage
    # Each stage's peak memory, the largest rank's since the stage began (VmHWM reset at its start): more than the
    # libraries' footprint, no more than all ranks together.
    memory = json.load(open(run / "memory.json"))
    for stage in ("teacher_cache", "train_gates", "calibrate", "heal", "export"):
        m = memory[stage]
        assert m["ranks"] == 2 and m["seconds"] > 0, (stage, m)
        assert 50 << 20 < m["peak_host_rss_bytes_max_rank"] <= m["peak_host_rss_bytes_all_ranks"], (stage, m)
    summary = json.load(open(run / "export" / "summary.json"))
    assert summary["verify"]["passed"], summary
    model, info = getattr(transformers, auto).from_pretrained(summary["export"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert summary["parameters"] < summary["dense_parameters"]
    assert model.num_parameters() == summary["parameters"]
    assert summary["evaluate"]["export"]["kl"] is not None and summary["evaluate"]["latency"]["export_s"] > 0
    assert (run / "export" / os.path.basename(summary["export"]) / "README.md").read_text().startswith("---\nbase_model:")
    assert (run / "logs" / "rank-0.log").exists() and (run / "logs" / "rank-1.log").exists()
    assert "train_gates: done" in (run / "logs" / "rank-1.log").read_text()

    # The report: self-contained (no scripts, nothing fetched) and its plots render in Chromium.
    html = run / "report" / "index.html"
    text = html.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    if not CHROMIUM:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); report not opened")
    dom = dom_of(html)
    for element in ("loss-curve", "kl-curve", "cost-curve", "calibrate-curve", "heatmap-heads", "heatmap-ffn",
                    "probes", "pareto", "chosen", "before-after", "verify", "quality", "speedup"):
        assert f'id="{element}"' in dom, element
    assert dom.count("<polyline") >= 4 and dom.count('class="cell"') > 8 and dom.count('class="candidate"') >= 2
    assert 'class="pass"' in dom
