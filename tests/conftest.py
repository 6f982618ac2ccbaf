"""Fixtures: the tiny pipelines of each family. The helpers tests import live in pipeline_helpers.py."""

from __future__ import annotations

import pytest

from sr_plugin.lab.tiny import FAMILIES, tiny_pair


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def pair(family):
    """(pipe, small) for the parametrized family."""
    return tiny_pair(family)
