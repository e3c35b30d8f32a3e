"""The runtime's contract: imports without torch, reports its build, CLI works."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import mmfast
from mmfast import _C

# The console script installed next to this interpreter (the venv's bin/), whether or not
# that directory is on PATH (CI runs .venv/bin/python without activating the venv).
_SCRIPT = Path(sys.executable).parent / "mmfast"
MMFAST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "mmfast"]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_import_and_info_with_torch_blocked():
    # sys.modules['torch'] = None makes any `import torch` raise ImportError.
    r = run_python(
        "import sys; sys.modules['torch'] = None\n"
        "import mmfast, numpy as np\n"
        "d = mmfast.info()\n"
        "p = mmfast.ops.softmax(np.ones((2, 3), np.float32))\n"
        "assert abs(p.sum() - 2) < 1e-6, p\n"
        "print('OK', d['kernel_variant_active'])\n"
    )
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "kernels compiled" in r.stdout


def test_import_does_not_load_torch_or_cuda_module():
    r = run_python(
        "import sys, mmfast, mmfast.ops, mmfast.cli\n"
        "bad = [m for m in ('torch', 'mmfast._C_cuda', 'mmfast_export') if m in sys.modules]\n"
        "print(bad)\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_info_reports_variants():
    d = mmfast.info(print_result=False)
    assert d["kernel_variants_compiled"] == _C.compiled_variants()
    assert "portable" in d["kernel_variants_compiled"]
    assert d["kernel_variant_active"] == d["kernel_variants_runnable"][0]
    feats = d["cpu_features"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "avx2" in d["kernel_variants_compiled"]
        assert "avx512" in d["kernel_variants_compiled"]
    # the active variant is the best one the CPU supports
    if feats.get("avx512f") and feats.get("avx512bw") and feats.get("avx512vl"):
        assert d["kernel_variant_active"] == "avx512"
    elif feats.get("avx2") and feats.get("fma"):
        assert d["kernel_variant_active"] == "avx2"
    else:
        assert d["kernel_variant_active"] == "portable"
    assert "CPUExecutionProvider" in d["onnxruntime_providers"]


def test_env_override_of_variant():
    r = subprocess.run(
        [sys.executable, "-c", "from mmfast import _C; print(_C.active_variant())"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "MMFAST_KERNEL": "portable"},
        check=True,
    )
    assert r.stdout.strip() == "portable"


@pytest.mark.parametrize("entry", [MMFAST, [sys.executable, "-m", "mmfast"]])
def test_cli_info(entry: list[str]):
    r = subprocess.run(
        [*entry, "info", "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["mmfast"] == mmfast.__version__
    assert d["kernel_variant_active"] in d["kernel_variants_compiled"]


def test_cli_bench_kernel_check():
    r = subprocess.run(
        [*MMFAST, "bench", "--repeats", "2"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kernel check: OK" in r.stdout


def test_cli_serve_without_a_bundle_names_the_option():
    r = subprocess.run([*MMFAST, "serve"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--bundle" in r.stderr.splitlines()[-1]


def test_cli_torch_command_without_torch_explains_install():
    r = run_python(
        "import sys; sys.modules['torch'] = None\n"
        "from mmfast.cli import main\n"
        "sys.exit(main(['train', 'caption', '--data', 'x', '--out', 'y']))\n"
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "pip install" in r.stderr and "export" in r.stderr


def test_cli_no_command_prints_help():
    r = subprocess.run(MMFAST, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "info" in r.stdout
