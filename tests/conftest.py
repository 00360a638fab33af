"""Shared test set-up."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def digits_data_dir(tmp_path_factory) -> str:
    """A tfds data dir shared by the tests that read the embedded `digits` dataset."""
    return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def timm():
    """timm, importable beside the CPU build of torch (see tests/torch_reference.py)."""
    import torch_reference

    return torch_reference.import_timm()


@pytest.fixture(scope='session')
def transformers():
    """Hugging Face transformers, importable beside the CPU build of torch."""
    import torch_reference

    return torch_reference.import_transformers()
