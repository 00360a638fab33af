"""Shared test set-up: a small data dir for `digits`, built once per session."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def digits_data_dir(tmp_path_factory) -> str:
    """A tfds data dir holding the embedded `digits` dataset (built on first use)."""
    return str(tmp_path_factory.mktemp('tfds'))
