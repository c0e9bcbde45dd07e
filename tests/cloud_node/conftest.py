"""Fixtures of the cloud-node tests.

``tests.fixtures.vllm`` is meant to be listed in the top-level ``tests/conftest.py``'s
``pytest_plugins``; pytest refuses that list in a nested conftest, so this one imports
the plugin itself when it is not registered yet (importing twice is a no-op).
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.import_plugin("tests.fixtures.vllm")
