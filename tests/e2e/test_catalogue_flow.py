"""The catalogue and holiday list flow down: `syncd catalogue import`, then the
agent's next sync brings them, signed, into its data directory."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from client.catalogue import due_at, load_calendar, load_catalogue
from tests.support.procs import Server, agent, syncd

NEW = {"code": "2.000123", "name": "Thủ tục thử nghiệm", "field": "Thử nghiệm",
       "processing_working_days": 2, "fee_vnd": 15000, "fee_note": None}


def catalogue_file(tmp_path: Path, holidays: list[str], name: str = "c.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"procedures": [NEW], "holidays": holidays},
                               ensure_ascii=False), encoding="utf-8")
    return path


def test_a_catalogue_change_on_the_server_reaches_the_agent(
        tmp_path: Path, server: Server, agent_dir: Path) -> None:
    assert load_catalogue(agent_dir).get(NEW["code"]) is None  # the shipped copy
    first = syncd("catalogue", "import", "--data-dir", str(server.data_dir),
                  str(catalogue_file(tmp_path, ["2026-12-01"])))
    assert "catalogue version 1" in first.stderr and "holidays version 1" in first.stderr
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60")

    procedure = load_catalogue(agent_dir).get(NEW["code"])
    assert procedure is not None and procedure.name == "Thủ tục thử nghiệm"
    received = datetime.fromisoformat("2026-11-27T09:00:00+07:00")  # a Friday
    # Two working days after Friday: Monday, then (Tuesday 12-01 is a holiday) Wednesday.
    assert due_at(received, 2, load_calendar(agent_dir)) == \
        datetime.fromisoformat("2026-12-02T17:00:00+07:00")

    # The same file again publishes nothing new; a change publishes the next version.
    again = syncd("catalogue", "import", "--data-dir", str(server.data_dir),
                  str(catalogue_file(tmp_path, ["2026-12-01"])))
    assert "holidays version 1" in again.stderr
    changed = syncd("catalogue", "import", "--data-dir", str(server.data_dir),
                    str(catalogue_file(tmp_path, [], "d.json")))
    assert "catalogue version 1" in changed.stderr and "holidays version 2" in changed.stderr
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60")
    assert due_at(received, 2, load_calendar(agent_dir)) == \
        datetime.fromisoformat("2026-12-01T17:00:00+07:00")
    assert json.loads((agent_dir / "published.json").read_text()) == \
        {"catalogue": 1, "holidays": 2}


def test_a_bad_catalogue_file_is_refused_and_changes_nothing(
        tmp_path: Path, server: Server) -> None:
    bad = tmp_path / "bad.json"
    for content in ('{"procedures": []}', '{"procedures": [{"code": "x", "name": "y"}]}',
                    "not json", '{"procedures": [{"code": "1.000001", "name": "a"}], '
                                '"holidays": ["2026-13-01"]}'):
        bad.write_text(content, encoding="utf-8")
        result = syncd("catalogue", "import", "--data-dir", str(server.data_dir), str(bad),
                       check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "nothing changed" in result.stderr or "cannot read" in result.stderr
