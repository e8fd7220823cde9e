"""Shared fixtures: the real test media beside the project and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MEDIA_DIR = Path(os.environ.get("FACEFLOW_TEST_MEDIA", PROJECT_ROOT.parent / "shared" / "media")).resolve()


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """The folder of real clips and photos with faces (see its MEDIA.md)."""
    if not MEDIA_DIR.is_dir():
        pytest.fail(f"test media not found at {MEDIA_DIR}; set FACEFLOW_TEST_MEDIA to the media folder")
    return MEDIA_DIR


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API for every test that runs flows (starting one costs seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    """Torch on one thread in tests: on 2 shared cores, contended OpenMP threads spin-wait and crawl."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
