"""The choice of kernel build: a build is never loaded on a CPU that lacks its instruction set."""

from __future__ import annotations

import dataclasses

import pytest

from pagedllm.ops import cpu_kernels


def test_a_build_needing_features_the_cpu_lacks_is_refused(caplog):
    lacking = dataclasses.replace(
        cpu_kernels.TARGETS["avx2"], name="needs-more", cpu_flags=("no_such_cpu_flag",)
    )
    assert cpu_kernels.load_target(lacking) is False
    assert "no_such_cpu_flag" in caplog.text


def test_an_unknown_build_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(cpu_kernels.TARGET_ENV, "sse2")
    with pytest.raises(ValueError, match="native, avx2"):
        cpu_kernels.selected_target()
