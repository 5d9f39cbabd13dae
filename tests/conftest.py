from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Server, enroll_agent


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "server").init().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def agent_dir(server: Server, tmp_path: Path) -> Path:
    return enroll_agent(server, tmp_path / "agent")
