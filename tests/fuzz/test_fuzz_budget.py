"""Run every fuzz harness for a short fixed budget (CI); a crash fails with its reproducer.

Each harness runs in its own process with libFuzzer flags: ``-max_total_time`` seconds from
its seed corpus (read only; new inputs go to a temporary folder), ``-timeout`` seconds per
input counts as a hang. The longer run is in tests/fuzz/README.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (pip install '.[test]')")

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
BUDGET_S = 8
DICTS = {"wire": "json.dict", "command": "json.dict", "config": "toml.dict"}
TARGETS = ("dlt645", "modbus", "wire", "command", "config")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS)
def test_harness_survives_its_budget(target: str, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    command = [
        sys.executable, str(HERE / f"harness_{target}.py"),
        f"-max_total_time={BUDGET_S}", "-timeout=5", "-rss_limit_mb=2048", "-max_len=8192",
        f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
        str(work), str(HERE / "corpus" / target),
    ]
    if target in DICTS:
        command.insert(2, f"-dict={HERE / DICTS[target]}")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)
    if done.returncode == 0:
        return
    reproducers = "\n".join(
        f"{path.name}: {path.read_bytes()!r}"
        for path in sorted(tmp_path.glob("*")) if path.is_file()
    )
    pytest.fail(f"harness_{target} crashed (exit {done.returncode}); reproducer:\n"
                f"{reproducers or '(none written)'}\n--- stderr tail ---\n"
                f"{done.stderr[-4000:]}")
