"""deploy/: the systemd units, the compose file and the image recipe agree with the code.

The image itself is not built here (no container daemon on CI); what can drift silently is
checked: every command line parses with the real `meterhub` parser, every unit passes
`systemd-analyze verify`, every part's package is copied into the image.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from launcher.cli import build_parser

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
METERHUB = "/opt/meterhub/.venv/bin/meterhub"


def _exec_start(unit: Path) -> list[str]:
    (line,) = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == METERHUB, f"{unit.name}: ExecStart runs {argv[0]}"
    return [a.replace("${CREDENTIALS_DIRECTORY}", "/run/credentials/x").replace("%H", "host")
            for a in argv[1:]]


def _parses(argv: list[str], where: str) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `meterhub {' '.join(argv)}` does not parse ({exc})")


def test_there_is_a_unit_per_server_part() -> None:
    assert {u.stem for u in UNITS} >= {"meterhub-gateway", "meterhub-collector",
                                       "meterhub-billing", "meterhub-web"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_command_lines_parse(unit: Path) -> None:
    _parses(_exec_start(unit), unit.name)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_units_pass_systemd_analyze(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    meterhub = Path(sys.executable).with_name("meterhub")
    text = unit.read_text().replace(METERHUB, str(meterhub))
    (tmp_path / unit.name).write_text(text)
    run = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / unit.name)],
                         capture_output=True, text=True, timeout=60)
    # verify reports problems of the unit it was given by name; other units' are not ours
    problems = [x for x in (run.stdout + run.stderr).splitlines() if unit.name in x]
    assert not problems, "\n".join(problems)


def test_metrics_ports_are_distinct() -> None:
    ports = [re.search(r"--metrics \S+:(\d+)", u.read_text()) for u in UNITS]
    found = [m[1] for m in ports if m]
    assert len(found) == len(UNITS) and len(set(found)) == len(found), found


def test_compose_commands_parse_and_secrets_are_declared() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    declared = set(compose.get("secrets", {}))
    parts = 0
    for name, service in compose["services"].items():
        for secret in service.get("secrets", []):
            assert secret["source"] in declared, f"{name}: undeclared secret {secret}"
        if service.get("image", "").startswith("meterhub"):
            parts += 1
            _parses(list(service["command"]), f"compose service {name}")
            env = service["environment"]
            assert "METERHUB_DATABASE_URL" in env and "METERHUB_MQTT_URL" in env, name
            # passwords come from the environment file, never written into the compose file
            assert all("${" in v for k, v in env.items() if "URL" in k and "@" in v), env
    assert parts >= 3
    assert compose["services"]["db"]["image"].startswith("timescale/timescaledb:")


def test_the_image_copies_every_part() -> None:
    recipe = (DEPLOY / "Containerfile").read_text()
    copied = set(re.findall(r"^COPY (?!--from)(\S+) ", recipe, re.M))
    for source in copied:
        assert (ROOT / source).exists(), f"Containerfile copies {source}, which does not exist"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    missing = packages - copied
    assert not missing, f"Containerfile does not copy {sorted(missing)}"
