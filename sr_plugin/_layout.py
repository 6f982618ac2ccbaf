"""The source layout keeps ``adapters/`` beside ``sr_plugin/``; installed, it is ``sr_plugin.adapters``.

Installed (wheel or editable), the import system finds ``sr_plugin.adapters`` on its own. Run from a source
checkout that is not the installed copy (``pip install .`` and then ``python -m pytest`` in the checkout, where
the checkout's ``sr_plugin/`` comes first on ``sys.path``), nothing maps the checkout's ``adapters/`` into
the package: this registers it as the ``sr_plugin.adapters`` subpackage, so the checkout runs as one piece.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

PACKAGE = "sr_plugin"


def use_checkout_adapters() -> None:
    here = pathlib.Path(__file__).resolve().parent
    name = f"{PACKAGE}.adapters"
    source = here.parent / "adapters" / "__init__.py"
    if (here / "adapters").is_dir() or name in sys.modules or not source.is_file():
        return  # an installed package, already imported, or not a checkout
    if importlib.util.find_spec(name) is not None:
        return  # an editable install maps it
    spec = importlib.util.spec_from_file_location(name, source, submodule_search_locations=[str(source.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    setattr(sys.modules[PACKAGE], "adapters", module)  # as the import system does for a submodule
