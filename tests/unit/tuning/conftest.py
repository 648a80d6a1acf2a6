"""Fakes for the tuning unit tests that hold wherever the code imports its collaborators.

The search's modules take Ray's, MLflow's and their own helpers either at the top or inside
a function; `swap` replaces a function under every name that a loaded sdpose module (or a
module named in `also`) holds it by, so a test's fake is the one called either way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture
def swap(monkeypatch) -> Callable[..., None]:
    """swap(original, fake, *also): `fake` wherever sdpose or `also` holds `original`."""

    def replace(original: Any, fake: Any, *also: ModuleType) -> None:
        modules = [
            module
            for name, module in list(sys.modules.items())
            if (name == "sdpose" or name.startswith("sdpose.")) and module is not None
        ]
        found = 0
        for module in [*modules, *also]:
            for attribute, value in list(vars(module).items()):
                if value is original:
                    monkeypatch.setattr(module, attribute, fake)
                    found += 1
        assert found, f"no module holds {original!r}: the fake would never be called"

    return replace
