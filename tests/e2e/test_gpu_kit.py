"""The GPU kit and the one-command GPU check (issue 15), as far as a machine without a GPU can take them:
launch/gpu/kit.sh builds the carry folder and checks it under `env -i` with the system's Open MPI and
PMIx hidden; bench/gpu/run.sh --dry-run runs the same steps as on a GPU with the tiny model on the CPU
and writes its summary. A `run.device = "cuda"` request on this machine fails once, before any stage.
"""
import json
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.environ.get("HAWADA_CLI", "")


def test_kit_builds_and_resolves_every_library(tmp_path):
    if not CLI or not os.path.exists(CLI):
        pytest.skip("HAWADA_CLI does not point at a built hawada-pipeline")
    if shutil.which("patchelf") is None:
        pytest.skip("patchelf missing (launch/setup.sh installs it)")
    ldd = subprocess.run(["ldd", CLI], capture_output=True, text=True).stdout
    if "libnccl" not in ldd:
        pytest.skip("this build has no CUDA/NCCL (the torch wheel in .venv is CPU-only): no GPU kit to build")
    env = {**os.environ, "HAWADA_BUILD_DIR": os.path.dirname(os.path.dirname(CLI))}
    p = subprocess.run(["bash", os.path.join(REPO, "launch", "gpu", "kit.sh"), str(tmp_path / "kit")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "every library resolves" in p.stdout and "kit ready" in p.stdout
    size = sum(f.stat().st_size for f in (tmp_path / "kit").rglob("*") if f.is_file() and not f.is_symlink())
    assert size <= 60 << 20, size


def test_gpu_script_dry_run(tmp_path):
    if not CLI or not os.path.exists(CLI):
        pytest.skip("HAWADA_CLI does not point at a built hawada-pipeline")
    env = {**os.environ, "HAWADA_BUILD_DIR": os.path.dirname(os.path.dirname(CLI)), "HAWADA_GPU_WORK": str(tmp_path / "work")}
    p = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu", "run.sh"), str(tmp_path / "out"), "--dry-run"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    s = json.load(open(tmp_path / "out" / "summary.json"))
    assert s["teacher_cache"]["tokens_per_s"] > 0 and s["train_gates"]["median_step_s"] > 0
    assert s["export"]["verify"]["passed"] and set(s["stages"]) >= {"teacher_cache", "train_gates", "export", "evaluate"}
    steps = open(tmp_path / "out" / "steps.txt").read()
    for step in ("test-nccl", "test-mpi-2ranks", "make-model", "make-data", "pipeline", "profile", "hf-forward"):
        assert f"{step} rc=0" in steps, steps


def test_a_cuda_request_without_a_gpu_fails_before_any_stage(tmp_path):
    if not CLI or not os.path.exists(CLI):
        pytest.skip("HAWADA_CLI does not point at a built hawada-pipeline")
    probe = subprocess.run([os.path.join(REPO, ".venv", "bin", "python"), "-c",
                            "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True)
    if probe.stdout.strip() == "True":
        pytest.skip("this machine has a GPU")
    subprocess.run([CLI, "make-model", "--arch", "llama", "--preset", "tiny", tmp_path / "m"], check=True,
                   capture_output=True)
    subprocess.run([CLI, "make-data", tmp_path / "m", "--samples", "16", "--seq-len", "8", tmp_path / "d.h5"],
                   check=True, capture_output=True)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\ndir = "{tmp_path / "run"}"\ndevice = "cuda"\n[model]\npath = "{tmp_path / "m"}"\n'
                   f'[data]\npath = "{tmp_path / "d.h5"}"\nseq_len = 8\n')
    p = subprocess.run([CLI, "run", cfg], capture_output=True, text=True)
    assert p.returncode == 2 and "ConfigError" in p.stderr and 'run.device = "cuda"' in p.stderr, p.stderr
    assert not any((tmp_path / "run" / "stages").glob("*.done")) if (tmp_path / "run" / "stages").exists() else True
    assert "teacher_cache" not in p.stderr
