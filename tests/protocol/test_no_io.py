"""`protocol` is pure: importing it loads no networking, event loop or database module,
and neither of the packages built on it (`client`, `syncd`).

Pure-compute libraries are allowed: msgpack, zstandard (batch payloads) and
cryptography (Ed25519 signatures, HPKE sealing of batches and document chunks).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import protocol

FORBIDDEN = ("asyncio", "aiohttp", "aiosqlite", "sqlite3", "socket", "ssl", "selectors",
             "client", "syncd")
# Third-party packages protocol may import: they compute on bytes, nothing more.
ALLOWED_THIRD_PARTY = ("msgpack", "zstandard", "cryptography")
PROJECT_ROOT = Path(protocol.__file__).resolve().parent.parent

_PROBE = """
import importlib, json, sys
before = sorted(sys.modules)
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
json.dump({"before": before, "after": sorted(sys.modules)}, sys.stdout)
"""


def _submodules() -> list[str]:
    names = ["protocol"]
    names += [f"protocol.{m.name}" for m in pkgutil.iter_modules(protocol.__path__)]
    return names


def _loaded_by_fresh_import(names: list[str]) -> tuple[set[str], set[str]]:
    """Import ``names`` in a fresh interpreter; return the modules loaded before and after."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(names)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    return set(loaded["before"]), set(loaded["after"])


def _matching(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)


def test_every_protocol_module_is_covered() -> None:
    names = _submodules()
    for expected in ("batches", "codec", "compression", "documents", "dossier", "errors",
                     "events", "messages", "sealing", "signing", "zstd_dictionaries"):
        assert f"protocol.{expected}" in names


def test_importing_protocol_loads_no_io_modules_nor_client_or_syncd() -> None:
    names = _submodules()
    before, after = _loaded_by_fresh_import(names)
    assert set(names) <= after  # every submodule really was imported
    assert _matching(before) == [], "the bare interpreter already loads one; the test is moot"
    assert _matching(after) == []


def test_the_allowed_compute_libraries_are_what_protocol_really_uses() -> None:
    """zstandard and cryptography are allowed because they are used (batch payloads;
    signatures and HPKE) and pull in nothing forbidden; the allowance is not a blanket one."""
    assert not set(ALLOWED_THIRD_PARTY) & set(FORBIDDEN)
    _, after = _loaded_by_fresh_import(_submodules())
    tops = {m.split(".")[0] for m in after}
    assert set(ALLOWED_THIRD_PARTY) <= tops
    for library in ("zstandard", "cryptography.hazmat.primitives.hpke",
                    "cryptography.hazmat.primitives.asymmetric.ed25519"):
        _, alone = _loaded_by_fresh_import([library])
        assert _matching(alone) == [], library


def test_third_party_imports_of_protocol_are_only_the_allowed_ones() -> None:
    """Whatever protocol's modules load beyond the standard library comes from the
    allowed packages (or is what their compiled parts bring: cffi, the ``cython_runtime``
    module every Cython extension such as msgpack's registers)."""
    before, after = _loaded_by_fresh_import(_submodules())
    tops = {m.split(".")[0] for m in after - before} - {"protocol"}
    third_party = {t for t in tops if t not in sys.stdlib_module_names and not t.startswith("_")}
    assert third_party <= {*ALLOWED_THIRD_PARTY, "cffi", "cython_runtime"}, third_party


def test_the_probe_would_notice_a_forbidden_import() -> None:
    """The same probe, importing a module that pulls in sockets, does see it."""
    _, after = _loaded_by_fresh_import(["protocol", "http.client"])
    assert "socket" in _matching(after)
