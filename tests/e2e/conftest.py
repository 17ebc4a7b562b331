"""The e2e tests share the cli and mpirun fixtures of the Hugging Face oracle tests."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "hawada_hf_conftest", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "hf", "conftest.py"))
_hf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_hf)
cli, mpirun = _hf.cli, _hf.mpirun
