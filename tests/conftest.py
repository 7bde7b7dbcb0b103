"""Shared fixtures: the bundled examples, built once per test session with real TensorFlow."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import smpack
from smpack.package.info import PackageInfo

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ROOT / "variants"


@pytest.fixture(scope="session")
def linear_package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    return smpack.build(VARIANTS / "linear.yaml", tmp_path_factory.mktemp("linear"))


@pytest.fixture(scope="session")
def text_package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    return smpack.build(VARIANTS / "text_classifier.yaml", tmp_path_factory.mktemp("text"))


@pytest.fixture
def variants_copy(tmp_path: Path) -> Path:
    """A private copy of variants/, for tests that edit manifests or delete sources."""
    target = tmp_path / "variants"
    shutil.copytree(VARIANTS, target)
    return target
