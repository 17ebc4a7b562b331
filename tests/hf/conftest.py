"""Shared fixtures of the Hugging Face oracle tests: transformers is the reference."""
import json
import os
import subprocess

import pytest

CLI = os.environ.get("HAWADA_CLI", "")


@pytest.fixture(scope="session")
def cli():
    if not CLI or not os.path.exists(CLI):
        pytest.skip("HAWADA_CLI does not point at a built hawada-pipeline")

    def run(*args, check=True):
        p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"hawada-pipeline {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}")
        return p

    return run


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.environ.get("HAWADA_MODELS_DIR", os.path.join(REPO, "models"))


@pytest.fixture(scope="session")
def smollm2():
    """The real pretrained SmolLM2-135M-Instruct (launch/real_models.py) and its token files
    (launch/real_data.py); skipped where set-up has not made them."""
    model = os.path.join(MODELS, "smollm2-135m")
    train = os.path.join(MODELS, "data", "smollm2-train-256.h5")
    evalf = os.path.join(MODELS, "data", "smollm2-eval-256.h5")
    for f in (os.path.join(model, "model.safetensors"), train, evalf):
        if not os.path.exists(f):
            pytest.skip(f"{f} missing: run launch/setup.sh (launch/real_models.py, launch/real_data.py)")
    return {"model": model, "train": train, "eval": evalf}


@pytest.fixture
def inspect_json(cli):
    return lambda path: json.loads(cli("inspect", "--json", path).stdout)


@pytest.fixture(scope="session")
def mpirun(cli):
    """Runs hawada-pipeline under `mpirun -np N` (one thread per rank); returns the CompletedProcess."""
    cli("--version")  # skips when the binary is missing

    def run(np, *args, env=None, check=True, timeout=300):
        full_env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                    "OMP_NUM_THREADS": "1", **(env or {})}
        exports = [a for k in (env or {}) for a in ("-x", k)]
        p = subprocess.run(["mpirun", "-np", str(np), "--oversubscribe", *exports, CLI, *map(str, args)],
                           capture_output=True, text=True, env=full_env, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"mpirun -np {np} hawada-pipeline {' '.join(map(str, args))} exited "
                                 f"{p.returncode}:\n{p.stderr}")
        return p

    return run
