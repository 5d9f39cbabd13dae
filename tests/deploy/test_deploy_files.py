"""Checks on the service files in deploy/ and the commands in docs/install-commune.md.

What can be checked on this machine: the systemd units with ``systemd-analyze
verify`` (or a parse of the keys when the tool is missing), the WinSW XML, the
PowerShell script (checked by reading: no PowerShell on this machine),
and every ``sync-agent``/``syncd`` command line of the install page against the
real command line parsers.
"""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from client.cli import build_parser as agent_parser
from syncd.cli import build_parser as server_parser

ROOT = Path(__file__).resolve().parents[2]
LINUX = ROOT / "deploy" / "linux"
WINDOWS = ROOT / "deploy" / "windows"
DOC = ROOT / "docs" / "install-commune.md"
BIN = Path(sys.executable).parent
UNITS = {
    "sync-agent.service": ("sync-agent", ["run", "--data-dir", "/var/lib/commune-sync"],
                           "/var/lib/commune-sync"),
    "syncd.service": ("syncd", ["serve", "--data-dir", "/var/lib/syncd"], "/var/lib/syncd"),
}
SERVICE_ID = "sync-agent"


def _parses(program: str, argv: list[str]) -> None:
    """Parse ``argv`` with the real parser; argparse's exit becomes a test failure."""
    parser = agent_parser() if program == "sync-agent" else server_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"{program} {' '.join(argv)} does not parse") from exc


# --- systemd units ------------------------------------------------------------------------

def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((LINUX / name).read_text(encoding="utf-8"))
    return parser


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_has_the_keys_a_daemon_needs(name: str) -> None:
    program, args, data_dir = UNITS[name]
    unit = _unit(name)
    service = unit["Service"]
    exec_start = shlex.split(service["ExecStart"])
    assert Path(exec_start[0]).name == program and Path(exec_start[0]).is_absolute()
    assert exec_start[1:1 + len(args)] == args
    assert service["Restart"] == "on-failure"
    assert 1 <= int(service["RestartSec"].rstrip("s")) <= 60
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 60  # syncd's shutdown grace is 60 s
    assert service["User"] not in ("", "root")
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert data_dir in service["ReadWritePaths"].split()
    assert service["PrivateTmp"] == "yes"
    assert service["EnvironmentFile"].startswith("-/etc/")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


def test_agent_unit_reads_its_environment_file() -> None:
    assert _unit("sync-agent.service")["Service"]["EnvironmentFile"] == (
        "-/etc/commune-sync/agent.env")


def test_unit_command_lines_parse_with_the_real_clis() -> None:
    for name, (program, _, _) in UNITS.items():
        _parses(program, shlex.split(_unit(name)["Service"]["ExecStart"])[1:])


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify also checks that ExecStart exists: point it at this checkout's scripts.
    paths = []
    for name in sorted(UNITS):
        text = (LINUX / name).read_text(encoding="utf-8")
        path = tmp_path / name
        path.write_text(text.replace("/opt/commune-sync/.venv/bin", str(BIN)), encoding="utf-8")
        paths.append(str(path))
    done = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Unknown key" not in done.stderr and "Unknown section" not in done.stderr, done.stderr


def test_no_logrotate_since_the_agent_logs_to_stderr_only() -> None:
    # If the agent ever writes a log file, add deploy/linux/logrotate for it.
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "client").glob("*.py"))
    assert "FileHandler" not in sources
    assert "journald" in (LINUX / "sync-agent.service").read_text(encoding="utf-8")


# --- Windows --------------------------------------------------------------------------------

def test_winsw_xml_restarts_rotates_and_starts_on_boot() -> None:
    root = ET.parse(WINDOWS / "sync-agent.xml").getroot()
    assert root.tag == "service"
    assert root.findtext("id") == SERVICE_ID
    assert root.findtext("startmode") == "Automatic"
    failures = root.findall("onfailure")
    assert failures and all(f.get("action") == "restart" for f in failures)
    log = root.find("log")
    assert log is not None and log.get("mode") == "roll-by-size"
    assert int(log.findtext("sizeThreshold", "0")) > 0
    assert int(log.findtext("keepFiles", "0")) > 0
    assert root.findtext("stoptimeout")
    argv = shlex.split(root.findtext("arguments", ""), posix=False)
    assert argv[:3] == ["-m", "client.cli", "run"]
    assert "--data-dir" in argv
    _parses("sync-agent", [a.strip('"') for a in argv[2:]])


def _script() -> str:
    raw = (WINDOWS / "install-service.ps1").read_bytes()
    # Windows PowerShell 5.1 reads a file without a BOM as ANSI: Vietnamese text breaks.
    assert raw.startswith(b"\xef\xbb\xbf")
    return raw[3:].decode("utf-8")


def test_install_script_is_consistent_with_the_xml() -> None:
    text = _script()
    assert re.search(r"\[switch\]\$Uninstall", text)
    for param in ("InstallDir", "DataDir", "ServerUrl", "Token", "WinSWSha256"):
        assert re.search(rf"\[string\]\${param}\b", text), param
    assert f'$ServiceId = "{SERVICE_ID}"' in text
    assert "sync-agent.xml" in text
    assert "Get-FileHash" in text and "v2.12.0" in text
    for command in ("install", "refresh", "start", "uninstall"):
        assert f'@("{command}")' in text, command


# --- the install page -------------------------------------------------------------------------

_COMMAND = re.compile(
    r"""(?:^|[\s/\\"'&(])(sync-agent|syncd)(?:\.exe)?"?[ \t]+([a-z][a-z-]*)(.*)""")


def _doc_commands() -> list[tuple[str, str, str, bool]]:
    """(program, subcommand, rest of the line, from a fenced block) for each command."""
    text = DOC.read_text(encoding="utf-8")
    found = []
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S)
    for block in fenced:
        joined = re.sub(r"[\\`]\n\s*", " ", block)  # sh and PowerShell continuations
        for line in joined.splitlines():
            found += [(m[1], m[2], m[3], True) for m in _COMMAND.finditer(line)]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = re.sub(r"\s*\n\s*", " ", span)
        found += [(m[1], m[2], m[3], False) for m in _COMMAND.finditer(span)]
    return found


def _help(program: str, subcommand: str) -> str:
    done = subprocess.run([str(BIN / program), subcommand, "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"{program} {subcommand} --help: {done.stderr}"
    return done.stdout


def test_doc_names_the_commands_it_must() -> None:
    used = {(program, sub) for program, sub, _, _ in _doc_commands()}
    for sub in ("init", "status", "sync-now"):
        assert ("sync-agent", sub) in used, sub
    assert ("syncd", "enroll") in used
    text = DOC.read_text(encoding="utf-8")
    for needle in ("/ui/enroll", "journalctl -u sync-agent", "install-service.ps1", "-Uninstall"):
        assert needle in text, needle


def test_every_doc_command_parses_with_the_real_cli() -> None:
    helps: dict[tuple[str, str], str] = {}
    for program, sub, rest, full in _doc_commands():
        key = (program, sub)
        if key not in helps:
            helps[key] = _help(program, sub)
        tokens = shlex.split(rest.replace("\\", "/"))
        for flag in (t.split("=")[0] for t in tokens if t.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[key]), (
                f"{program} {sub}: {flag} is not in its --help")
        if full:
            _parses(program, [sub, *tokens])
