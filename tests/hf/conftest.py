"""Shared fixtures of the Hugging Face oracle tests: transformers is the reference."""
import json
import os
import subprocess

import pytest

CLI = os.environ.get("HAWADA_CLI", "")


@pytest.fixture
def cli():
    if not CLI or not os.path.exists(CLI):
        pytest.skip("HAWADA_CLI does not point at a built hawada-pipeline")

    def run(*args, check=True):
        p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"hawada-pipeline {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}")
        return p

    return run


@pytest.fixture
def inspect_json(cli):
    return lambda path: json.loads(cli("inspect", "--json", path).stdout)
