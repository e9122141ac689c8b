"""Shared test setup: strict dtype promotion and rank promotion, as in equinox.

The library must work for users who turn these on, so the tests run with them.
"""

import os

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def standard_promotion():
    """For code that does not run under strict promotion (optax's adam and MultiSteps)."""
    with jax.numpy_dtype_promotion("standard"):
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# tests/multidevice needs 8 devices: tests/test_multidevice.py runs it in a
# subprocess with XLA_FLAGS set; a session started with 8 devices collects it.
collect_ignore = [] if jax.device_count() >= 8 else ["multidevice"]


# The quick subset, `python -m pytest -q -m "not slow"`, leaves out the tests
# that start other Python processes (the command line, the 8-device session,
# x64, the demo, the cache), and the real vision models (marked in their file):
# most of the suite's time, little of its surface.
SLOW_MODULES = {"test_cli.py", "test_examples.py", "test_multidevice.py", "test_x64.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


# The 8-device session (tests/test_multidevice.py) starts as soon as the tests
# to run are known, when its test is among them: it runs alongside this
# session, and its test only waits for its result.
MULTIDEVICE_TEST = "test_multidevice.py::test_multidevice_suite"


def _multidevice_module(session):
    """tests/test_multidevice.py when its test is to run here (and would not be skipped), else None."""
    # Under pytest-xdist every worker collects every test: the one that runs it starts it.
    if session.config.option.collectonly or jax.device_count() >= 8 or "PYTEST_XDIST_WORKER" in os.environ:
        return None
    for item in getattr(session, "items", []):
        if item.nodeid.endswith(MULTIDEVICE_TEST):
            return item.module
    return None


def pytest_collection_finish(session):
    module = _multidevice_module(session)
    if module is not None:
        module.start()


def pytest_sessionfinish(session):
    module = _multidevice_module(session)
    if module is not None:
        module.stop()
