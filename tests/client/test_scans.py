"""ScanFolder on real files: a scan is offered only once it stopped changing."""

from __future__ import annotations

from pathlib import Path

from client.scans import ScanFolder


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_scan_is_offered_only_after_it_settles(tmp_path: Path) -> None:
    clock = Clock()
    folder = ScanFolder(tmp_path, settle_s=1.0, clock=clock)
    scan = tmp_path / "ho-so.pdf"
    scan.write_bytes(b"a" * 1000)
    folder.look()
    assert folder.offered() == []  # just appeared
    clock.now += 0.6
    with scan.open("ab") as out:  # the scanner is still writing
        out.write(b"b" * 1000)
    folder.look()
    clock.now += 0.6
    folder.look()
    assert folder.offered() == []  # unchanged for 0.6 s only
    clock.now += 0.5
    folder.look()
    [offered] = folder.offered()
    assert offered.name == "ho-so.pdf" and offered.size == 2000
    assert folder.path_of("ho-so.pdf") == scan
    assert folder.path_of("../ho-so.pdf") is None and folder.path_of("khac.pdf") is None
    with scan.open("ab") as out:  # written again after it was offered: not taken
        out.write(b"c")
    assert folder.path_of("ho-so.pdf") is None


def test_empty_hidden_temporary_and_nested_files_are_never_offered(tmp_path: Path) -> None:
    clock = Clock()
    folder = ScanFolder(tmp_path, settle_s=1.0, clock=clock)
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / ".~lock.pdf").write_bytes(b"x")
    (tmp_path / "scan.tmp").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.pdf").write_bytes(b"x")
    (tmp_path / "link.pdf").symlink_to(tmp_path / "sub" / "inner.pdf")
    for _ in range(3):
        folder.look()
        clock.now += 1.0
    assert folder.offered() == []


def test_setting_aside_keeps_every_file(tmp_path: Path) -> None:
    clock = Clock()
    folder = ScanFolder(tmp_path, settle_s=1.0, clock=clock)
    (tmp_path / "attached").mkdir()
    (tmp_path / "attached" / "a.pdf").write_bytes(b"old")
    (tmp_path / "a.pdf").write_bytes(b"new")
    folder.set_aside(["a.pdf"])
    assert (tmp_path / "attached" / "a.pdf").read_bytes() == b"old"
    assert (tmp_path / "attached" / "a (2).pdf").read_bytes() == b"new"
    assert not (tmp_path / "a.pdf").exists()
