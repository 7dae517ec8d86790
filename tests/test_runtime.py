"""The one place that configures TensorFlow: oneDNN chosen before TensorFlow loads (and the user's
own setting kept), the CPU count where ``sched_getaffinity`` does not exist."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mnistlab import runtime

ONEDNN_ON_MESSAGE = "oneDNN custom operations are on"  # TensorFlow's own start-up line


def child(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in (runtime.ONEDNN_ENV, runtime.LOG_LEVEL_ENV)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**base, **env}, check=True)


@pytest.mark.parametrize("user, expected", [(None, "1"), ("0", "0"), ("1", "1")])
def test_importing_mnistlab_sets_onednn_before_tensorflow_and_keeps_the_users_choice(user, expected):
    env = {runtime.ONEDNN_ENV: user} if user is not None else {}
    out = child("import os, sys, mnistlab\nprint('tensorflow' in sys.modules, os.environ['TF_ENABLE_ONEDNN_OPTS'])",
                **env).stdout.split()
    assert out == ["False", expected]


@pytest.mark.parametrize("user, on", [(None, True), ("0", False)])
def test_tensorflow_runs_onednn_as_chosen(user, on):
    """TensorFlow announces oneDNN when it loads with it on (log level 0 lets the line through)."""
    env = {runtime.LOG_LEVEL_ENV: "0", **({runtime.ONEDNN_ENV: user} if user is not None else {})}
    err = child("import mnistlab\nimport tensorflow", **env).stderr
    assert (ONEDNN_ON_MESSAGE in err) is on


def test_the_cli_prepares_the_environment_too():
    out = child("import os, sys\nfrom mnistlab import cli\ncli.build_parser()\n"
                "print('tensorflow' in sys.modules, os.environ.get('TF_ENABLE_ONEDNN_OPTS'))").stdout.split()
    assert out == ["False", "1"]


def test_cpu_count_without_sched_getaffinity(monkeypatch):
    assert runtime.cpu_count() >= 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS and Windows have none
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert runtime.cpu_count() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert runtime.cpu_count() == 1
    assert runtime.onednn_setting() in ("on", "off", "TensorFlow's choice")


def test_auto_precision_is_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "fma"})  # an AVX2-only laptop
    assert runtime.resolve_precision("auto") == "float32"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert runtime.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"amx_bf16", "amx_tile"})
    assert runtime.resolve_precision("auto") == "mixed_bfloat16"
    assert runtime.resolve_precision("mixed_float16") == "mixed_float16"  # asked for: as given
    assert runtime.resolve_precision("float32") == "float32"
    monkeypatch.setenv(runtime.ONEDNN_ENV, "0")  # the user turned oneDNN off: Eigen would emulate bfloat16
    assert runtime.resolve_precision("auto") == "float32"
    assert runtime.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"  # asked for: as given
    monkeypatch.setenv(runtime.ONEDNN_ENV, "1")
    assert runtime.resolve_precision("auto") == "mixed_bfloat16"
    for capped in ("AVX2", "avx512_core_vnni", "AVX2_VNNI_2"):  # oneDNN told to use less than bfloat16 needs
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", capped)
        assert runtime.resolve_precision("auto") == "float32", capped
    for kept in ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", kept)
        assert runtime.resolve_precision("auto") == "mixed_bfloat16", kept
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # its older name
    assert runtime.onednn_isa_limit() == "AVX2" and runtime.resolve_precision("auto") == "float32"
