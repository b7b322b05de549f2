"""The public namespace: what ``dir()`` shows of the package and its public modules.

``from __future__ import annotations`` leaves a name ``annotations`` (a ``__future__``
feature object) in the module that does it; in the package that shows up in
``dir(tunoffload)`` and in tab completion as if it were API.
"""

import __future__

import importlib
import json
import subprocess
import sys

import pytest

PUBLIC_MODULES = [
    "tunoffload",
    "tunoffload.aio",
    "tunoffload.cli",
    "tunoffload.__main__",
    "tunoffload.psk",
]


def _fresh_namespace(module: str) -> tuple[list[str], list[str]]:
    """``dir(module)`` and ``module.__all__`` as a fresh interpreter sees them right after
    ``import module`` (in this process other tests have imported submodules, which become
    attributes of the package)."""
    code = (
        "import importlib, json, sys\n"
        f"m = importlib.import_module({module!r})\n"
        "json.dump([dir(m), list(m.__all__)], sys.stdout)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    names, all_ = json.loads(out)
    return names, all_


def test_dir_of_package_is_all_plus_dunders() -> None:
    names, all_ = _fresh_namespace("tunoffload")
    assert len(all_) == len(set(all_)), f"duplicates in __all__: {sorted(all_)}"
    missing = set(all_) - set(names)
    assert not missing, f"in __all__ but not defined: {sorted(missing)}"
    public = {n for n in names if not n.startswith("_")}
    assert public == {n for n in all_ if not n.startswith("_")}, (
        f"public names not in __all__: {sorted(public - set(all_))}"
    )


def test_aio_all_is_defined() -> None:
    names, all_ = _fresh_namespace("tunoffload.aio")
    assert all_ == ["AsyncOpener", "AsyncSealer", "AsyncTunDevice", "AsyncUdpSocket"]
    assert set(all_) <= set(names)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_no_future_feature_leaks(module: str) -> None:
    mod = importlib.import_module(module)
    leaked = [n for n, v in vars(mod).items() if isinstance(v, __future__._Feature)]
    assert leaked == [], f"{module} exposes __future__ features as attributes: {leaked}"
