"""The source layout keeps ``adapters/`` beside ``sr_plugin/``; installed, it is ``sr_plugin.adapters``.

Installed (wheel or editable), the import system finds ``sr_plugin.adapters`` on its own. Run from a source
checkout that is not the installed copy (``pip install .`` and then ``python -m pytest`` in the checkout, where
the checkout's ``sr_plugin/`` comes first on ``sys.path``), nothing maps the checkout's ``adapters/`` into
the package: a finder added here does, when it is first imported (nothing heavy is imported up front).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import pathlib
import sys

PACKAGE = "sr_plugin"
NAME = f"{PACKAGE}.adapters"


class _CheckoutAdapters(importlib.abc.MetaPathFinder):
    def __init__(self, source: pathlib.Path) -> None:
        self.source = source

    def find_spec(self, fullname: str, path: object, target: object = None) -> object:
        if fullname != NAME:
            return None
        return importlib.util.spec_from_file_location(NAME, self.source / "__init__.py",
                                                      submodule_search_locations=[str(self.source)])


def use_checkout_adapters() -> None:
    here = pathlib.Path(__file__).resolve().parent
    source = here.parent / "adapters"
    if (here / "adapters").is_dir() or not (source / "__init__.py").is_file():
        return  # an installed package, or not a checkout
    if any(isinstance(f, _CheckoutAdapters) for f in sys.meta_path):
        return
    # After the path-based finders: an editable install's own mapping (a later finder) is equivalent; the
    # checkout's sr_plugin/ has no adapters/ inside, so the standard finders find nothing before this one.
    sys.meta_path.append(_CheckoutAdapters(source))
