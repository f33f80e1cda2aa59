"""Shared pytest fixtures and the kernel-availability check."""

from __future__ import annotations

import os
import sys

import pytest

# Run the installed polc, never the source tree's top-level folders by accident.
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _root]


def kernel_skip_reason() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for bpf(2) (CAP_BPF, CAP_NET_ADMIN)"
    return None


@pytest.fixture
def needs_kernel():
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)


# --- Hypothesis profiles (property tests: tests/test_property_*.py) -----------------------
# "ci" (the default) checks a few hundred kernel-compiled cases in a few minutes, with a fixed
# seed so that CI is reproducible; "thorough" runs many more random cases for long runs:
#   POLC_HYPOTHESIS_PROFILE=thorough tests/run -k property
try:
    from hypothesis import HealthCheck, settings as _hsettings

    _slow_ok = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    _hsettings.register_profile("ci", deadline=None, suppress_health_check=_slow_ok, derandomize=True,
                                print_blob=True)
    _hsettings.register_profile("thorough", deadline=None, suppress_health_check=_slow_ok,
                                print_blob=True)
    _hsettings.load_profile(os.environ.get("POLC_HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a test extra; the property tests import it themselves
    pass
