"""The import rules of ARCHITECTURE.md, enforced: a violation fails here with file, line and rule.

One AST pass over every ``.py`` under the package folders collects each import: module-level,
function-local, and ``importlib.import_module("...")`` / ``__import__("...")`` with a string
literal. ``from pkg import name`` counts as an import of the submodule ``pkg.name`` when that
module exists, so ``from billing import ledger`` is seen as reaching into ``billing.ledger``.
The rules are checked on all imports; the cycle check skips those under ``if TYPE_CHECKING:``
(they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNEL = "meterhub"
PARTS = ("meterhub", "launcher", "firmware_sim", "gateway", "collector", "billing", "notify",
         "web")
# parts below the launcher that may import the kernel and nothing else of the project
LEAF_PARTS = frozenset({"firmware_sim", "gateway", "collector", "billing"})
# what web may import of billing and collector: the package (its __init__ exports) and the
# read models
WEB_MAY_IMPORT = frozenset({"billing", "collector", "billing.read_model", "collector.read_model"})
MQTT_CLIENTS = frozenset({"aiomqtt", "paho"})
BILLING_MQTT_MODULE = "billing.commands"

RULE_KERNEL = "the kernel (meterhub/) imports no project part"
RULE_LEAF = "firmware_sim, gateway, collector and billing import only meterhub (and themselves)"
RULE_COLLECTOR_GATEWAY = "the collector never imports the gateway"
RULE_BILLING_MQTT = "billing talks MQTT (aiomqtt/paho) only through billing/commands.py"
RULE_NOTIFY = "notify imports only meterhub and billing's public API (the billing package)"
RULE_WEB = ("web imports only meterhub and the public API of billing/collector (the package "
            "itself, billing.read_model, collector.read_model)")


@dataclass(frozen=True)
class Import:
    path: str  # relative to the repo root, for the message
    line: int
    importer: str  # dotted module name of the importing file
    target: str  # dotted module name imported
    type_checking: bool  # under ``if TYPE_CHECKING:``: skipped by the cycle check


def module_name(rel_path: str) -> str:
    """``web/app.py`` -> ``web.app``; ``billing/__init__.py`` -> ``billing``."""
    parts = list(Path(rel_path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dynamic_import(node: ast.Call) -> str | None:
    """The literal module name of ``importlib.import_module("x")`` or ``__import__("x")``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def imports_of(source: str, rel_path: str, known_modules: Iterable[str]) -> list[Import]:
    """Every import in one file's source, with absolute targets."""
    known = set(known_modules)
    importer = module_name(rel_path)
    package = importer if rel_path.endswith("__init__.py") else importer.rpartition(".")[0]
    found: list[Import] = []

    def add(node: ast.stmt | ast.expr, target: str, type_checking: bool) -> None:
        found.append(Import(rel_path, node.lineno, importer, target, type_checking))

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name, type_checking)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = (f"{base}.{a.name}" for a in node.names)  # a submodule, else a name
            for target in dict.fromkeys(t if t in known else base for t in targets):
                add(node, target, type_checking)
        elif isinstance(node, ast.Call) and (literal := _dynamic_import(node)):
            add(node, literal, type_checking)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            visit(node.test, type_checking)
            for stmt in node.body:
                visit(stmt, True)
            for stmt in node.orelse:
                visit(stmt, type_checking)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(ast.parse(source, filename=rel_path), False)
    return found


def project_sources(root: Path = REPO) -> dict[str, str]:
    """Relative path -> source of every ``.py`` in the package folders."""
    sources: dict[str, str] = {}
    for part in PARTS:
        for path in sorted((root / part).rglob("*.py")):
            if "__pycache__" not in path.parts:
                sources[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
    return sources


def collect(sources: Mapping[str, str]) -> list[Import]:
    known = {module_name(p) for p in sources}
    return [imp for path, src in sources.items() for imp in imports_of(src, path, known)]


def _part(module: str) -> str:
    return module.partition(".")[0]


def _web_may_import(target: str) -> bool:
    return (_part(target) in (KERNEL, "web") or target in WEB_MAY_IMPORT
            or target.startswith(("billing.read_model.", "collector.read_model.")))


def violations(imports: Iterable[Import], *, web: bool = False) -> list[str]:
    """One message per broken rule: ``path:line: importer imports target: rule``.

    ``web=False`` checks every part but web; ``web=True`` checks only web's rule.
    """
    messages = []
    for imp in imports:
        src, dst = _part(imp.importer), _part(imp.target)
        rule = None
        if web:
            if src == "web" and dst in PARTS and not _web_may_import(imp.target):
                rule = RULE_WEB
        elif src == KERNEL and dst in PARTS and dst != KERNEL:
            rule = RULE_KERNEL
        elif src == "collector" and dst == "gateway":
            rule = RULE_COLLECTOR_GATEWAY
        elif src in LEAF_PARTS and dst in PARTS and dst not in (KERNEL, src):
            rule = RULE_LEAF
        elif (src == "notify" and dst in PARTS and dst not in (KERNEL, "notify")
              and imp.target != "billing"):
            rule = RULE_NOTIFY
        elif (src == "billing" and dst in MQTT_CLIENTS
              and imp.importer != BILLING_MQTT_MODULE):
            rule = RULE_BILLING_MQTT
        if rule:
            messages.append(f"{imp.path}:{imp.line}: {imp.importer} imports {imp.target}: {rule}")
    return messages


def import_cycles(imports: Iterable[Import], known_modules: Iterable[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    known = set(known_modules)
    graph: dict[str, set[str]] = {m: set() for m in known}
    for imp in imports:
        if imp.type_checking:
            continue
        target = imp.target
        while target and target not in known:  # ``pkg.mod.Name`` imported as a module
            target = target.rpartition(".")[0]
        if target and target != imp.importer:
            graph[imp.importer].add(target)

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(node: str) -> None:  # recursion depth is bounded by the module count
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                strongconnect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return sorted(cycles)


@pytest.fixture(scope="module")
def project() -> tuple[list[Import], set[str]]:
    sources = project_sources()
    return collect(sources), {module_name(p) for p in sources}


# ------------------------------------------------------------------ the rules on the real tree

def test_parts_keep_the_import_rules(project: tuple[list[Import], set[str]]) -> None:
    imports, _ = project
    broken = violations(imports)
    assert not broken, "import rules broken (see ARCHITECTURE.md):\n" + "\n".join(broken)


def test_web_imports_only_public_api(project: tuple[list[Import], set[str]]) -> None:
    imports, _ = project
    broken = violations(imports, web=True)
    assert not broken, "import rules broken (see ARCHITECTURE.md):\n" + "\n".join(broken)


@pytest.mark.parametrize("part", PARTS)
def test_no_import_cycle(project: tuple[list[Import], set[str]], part: str) -> None:
    imports, known = project
    cycles = [c for c in import_cycles(imports, known) if _part(c[0]) == part]
    assert not cycles, "import cycles (modules importing each other, directly or round " \
        "about):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_checker_sees_the_whole_tree(project: tuple[list[Import], set[str]]) -> None:
    """Guards the guard: an empty walk would pass every rule."""
    imports, known = project
    assert {_part(m) for m in known} == set(PARTS)
    assert any(i.importer == "launcher.demo" and i.target == "launcher.embedded" for i in imports)


# ------------------------------------------------------- the checker catches what it should

KNOWN = {"meterhub", "meterhub.wire", "gateway", "gateway.app", "collector", "collector.store",
         "collector.read_model", "billing", "billing.ledger", "billing.commands",
         "billing.engine", "billing.read_model", "web", "web.app", "web.routes", "launcher",
         "launcher.cli"}


def _check(path: str, source: str, *, web: bool = False) -> list[str]:
    return violations(imports_of(source, path, KNOWN), web=web)


def test_checker_reports_kernel_importing_a_part() -> None:
    broken = _check("meterhub/wire.py", "import json\n\ndef f():\n    from billing import x\n")
    assert broken == [f"meterhub/wire.py:4: meterhub.wire imports billing: {RULE_KERNEL}"]


def test_checker_reports_notify_reaching_into_billing() -> None:
    assert _check("notify/service.py", "from billing import due_notices\n") == []
    broken = _check("notify/service.py", "from billing.ledger import topup\nimport web\n")
    assert broken == [
        f"notify/service.py:1: notify.service imports billing.ledger: {RULE_NOTIFY}",
        f"notify/service.py:2: notify.service imports web: {RULE_NOTIFY}",
    ]


def test_checker_reports_leaf_parts_importing_each_other() -> None:
    src = "from billing.ledger import post\nimport importlib\nimportlib.import_module('web.app')\n"
    assert _check("gateway/app.py", src) == [
        f"gateway/app.py:1: gateway.app imports billing.ledger: {RULE_LEAF}",
        f"gateway/app.py:3: gateway.app imports web.app: {RULE_LEAF}",
    ]
    assert _check("collector/store.py", "from ..gateway import app\n") == [
        f"collector/store.py:1: collector.store imports gateway.app: {RULE_COLLECTOR_GATEWAY}"
    ]
    assert _check("billing/engine.py", "import launcher.cli\n") == [
        f"billing/engine.py:1: billing.engine imports launcher.cli: {RULE_LEAF}"
    ]


def test_checker_allows_kernel_self_and_launcher() -> None:
    assert _check("gateway/app.py", "from meterhub import wire\nfrom . import app\n") == []
    assert _check("launcher/cli.py", "import web.app\nfrom billing import ledger\n") == []


def test_checker_reports_mqtt_outside_billing_commands() -> None:
    src = "import aiomqtt\nfrom paho.mqtt import client\n"
    assert _check("billing/engine.py", src) == [
        f"billing/engine.py:1: billing.engine imports aiomqtt: {RULE_BILLING_MQTT}",
        f"billing/engine.py:2: billing.engine imports paho.mqtt: {RULE_BILLING_MQTT}",
    ]
    assert _check("billing/commands.py", src) == []
    assert _check("collector/store.py", src) == []


def test_checker_reports_web_reaching_past_the_public_api() -> None:
    src = ("import billing\nfrom billing import read_model, topup\nfrom collector.read_model "
           "import meters\nfrom meterhub import wire\nfrom billing import ledger\n"
           "import collector.store\nfrom launcher import cli\n")
    assert _check("web/app.py", src, web=True) == [
        f"web/app.py:5: web.app imports billing.ledger: {RULE_WEB}",
        f"web/app.py:6: web.app imports collector.store: {RULE_WEB}",
        f"web/app.py:7: web.app imports launcher.cli: {RULE_WEB}",
    ]
    assert _check("web/app.py", src) == []  # web's rule is its own test


def test_checker_finds_cycles_but_not_type_checking_imports() -> None:
    sources = {
        "web/app.py": "from web.routes import handler\n",
        "web/routes.py": "def handler():\n    from web import app\n",
        "billing/ledger.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from billing.engine import Engine\n",
        "billing/engine.py": "from billing.ledger import post\n",
    }
    known = {module_name(p) for p in sources}
    assert import_cycles(collect(sources), known) == [["web.app", "web.routes"]]
