"""The package's shape: imports go one way, the public API is what it says, the CLI needs no torch
for its help, refusal is measured in one place, and modules and functions stay small enough to read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rosi

SRC = Path(rosi.__file__).parent

# What each part of the package may import from rosi (besides itself and the foundation). The
# order is the pipeline: model <- direction <- edit <- export <- workflows <- cli; the refusal
# meter measures any model for all of them, evaluation and audit measure a model beside it. The
# package root (rosi/__init__.py, the lazy public API) is imported by no module. docs/development.md
# draws this as a table of floors, row for row (test_the_development_page_draws_this_map).
FOUNDATION = {"rosi._version", "rosi.errors", "rosi._fs", "rosi.metrics"}
_BELOW_WORKFLOWS = {"rosi.model", "rosi.prompts", "rosi.judges", "rosi.measure", "rosi.direction", "rosi.edit", "rosi.export"}
ALLOWED = {
    "foundation": set(),
    "rosi.model": set(),
    "rosi.prompts": set(),
    "rosi.judges": {"rosi.model"},
    "rosi.measure": {"rosi.model", "rosi.prompts", "rosi.judges"},
    "rosi.direction": {"rosi.model", "rosi.prompts"},
    "rosi.edit": {"rosi.model", "rosi.prompts", "rosi.judges", "rosi.measure", "rosi.direction"},
    "rosi.export": {"rosi.model", "rosi.direction", "rosi.edit"},
    "rosi.eval": {"rosi.model", "rosi.prompts", "rosi.judges", "rosi.measure"},
    "rosi.audit": {"rosi.model", "rosi.prompts", "rosi.direction", "rosi.edit", "rosi.export"},
    "rosi.workflows": _BELOW_WORKFLOWS,
    "rosi.cli": _BELOW_WORKFLOWS | {"rosi.workflows", "rosi.eval", "rosi.audit"},
}


def _part(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    head = ".".join(module.split(".")[:2])
    if head not in ALLOWED:
        raise AssertionError(f"{module} belongs to no part of the package; add its folder to ALLOWED and to docs/development.md")
    return head


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every rosi module ``module`` imports, at the top or inside a function."""
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rosi"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "rosi":
                found.add(base)
    return found


def test_imports_go_one_way():
    bad = []
    for module, path in _modules().items():
        if module == "rosi":
            continue  # the package's lazy public API names modules of every part
        part = _part(module)
        for imported in _imports(path, module):
            target = _part(imported)
            if target not in ("foundation", part) and target not in ALLOWED[part]:
                bad.append(f"{module} imports {imported} ({part} may import {sorted(ALLOWED[part]) or 'only the foundation'})")
            if part == "foundation" and target != "foundation":
                bad.append(f"{module} (foundation) imports {imported}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_wrong_way_import(tmp_path):
    """The test above can fail: a model module that imports the edit layer is caught."""
    fake = tmp_path / "bad.py"
    fake.write_text("from rosi.edit.apply import apply_edit\n\ndef f():\n    from ..eval import report\n")
    found = _imports(fake, "rosi.model.bad")
    assert found == {"rosi.edit.apply", "rosi.eval"}
    assert _part("rosi.edit.apply") not in ALLOWED["rosi.model"]


def test_no_module_imports_the_package_root():
    """``rosi/__init__.py`` is the public API for users; inside the package the version comes from
    ``rosi._version`` and everything else from the module that defines it."""
    bad = [module for module, path in _modules().items() if module != "rosi" and "rosi" in _imports(path, module)]
    assert not bad, f"these modules import the package root: {bad}"


def test_every_module_has_a_part():
    for module in _modules():
        if module != "rosi":
            _part(module)


def _floors() -> dict[str, int]:
    """Each part's floor: one above the highest floor it may import (the foundation is floor 0)."""
    floors = {"foundation": 0}
    while len(floors) < len(ALLOWED):
        for part, below in ALLOWED.items():
            if part not in floors and below <= floors.keys():
                floors[part] = 1 + max((floors[b] for b in below), default=0)
    return floors


def _doc_map() -> list[tuple[int, str, set[str]]]:
    """The rows of the floor table under "## The map" in docs/development.md."""
    text = (SRC.parents[1] / "docs" / "development.md").read_text(encoding="utf-8")
    section = text.split("## The map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            part = "foundation" if cells[1].startswith("foundation") else "rosi." + cells[1].strip("`/")
            imports = set() if cells[2] == "nothing" else {"rosi." + name.strip(" `") for name in cells[2].split(",")}
            rows.append((int(cells[0]), part, imports))
    return rows


def test_the_development_page_draws_this_map():
    """docs/development.md's map has a row for every folder of src/rosi and for the foundation, with
    its floor and exactly what ALLOWED lets it import; the foundation row names every foundation module."""
    rows = _doc_map()
    folders = {f"rosi.{p.name}" for p in SRC.iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    assert sorted(part for _, part, _ in rows) == sorted(ALLOWED) == sorted(folders | {"foundation"})
    floors = _floors()
    assert {part: (floor, imports) for floor, part, imports in rows} == {part: (floors[part], ALLOWED[part]) for part in ALLOWED}
    assert [floor for floor, _, _ in rows] == sorted(floor for floor, _, _ in rows), "the rows go up floor by floor"
    text = (SRC.parents[1] / "docs" / "development.md").read_text(encoding="utf-8")
    named = next(line for line in text.splitlines() if "| foundation:" in line).split("|")[2].replace("foundation:", "").split()
    assert {"rosi." + name.strip("`").removesuffix(".py") for name in named} == FOUNDATION


def test_public_api():
    expected = {
        "load",
        "extract",
        "run",
        "apply_edit",
        "revert_edit",
        "evaluate",
        "Direction",
        "EditRecord",
        "save_checkpoint",
        "RosiError",
    }
    assert expected <= set(rosi.__all__)
    assert rosi.__all__ == sorted([*rosi._EXPORTS, "__version__"])
    for name in rosi.__all__:
        assert getattr(rosi, name) is not None, name
    with pytest.raises(AttributeError):
        rosi.nothing_here  # noqa: B018


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["eval", "--help"], ["edit", "--help"]])
def test_cli_help_does_not_import_torch(argv):
    code = (
        "import sys\n"
        "from rosi.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage: rosi" in done.stdout


def test_refusal_is_measured_in_one_place():
    """Every refusal figure (the commands, the benchmarks, the examples) comes from ``rosi.measure``:
    outside it and ``rosi.judges``, no module uses the marker judge's functions (``is_refusal``,
    ``is_partial``, ``refusal_rate``, ``partial_rate``: imported, called or passed on) or asks a
    judge for verdicts itself (a ``.judge(...)`` call). ``RefusalRate.partial_rate``, a property
    read without a call, is the meter's result, not the marker judge's function. Tests are exempt."""
    markers = {"is_refusal", "is_partial", "refusal_rate", "partial_rate"}

    def offences(source: str) -> list[str]:
        found = []
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):
                found += [(node.lineno, f"imports {a.name}") for a in node.names if a.name in markers]
            elif isinstance(node, ast.Name) and node.id in markers:
                found.append((node.lineno, node.id))
            elif isinstance(node, ast.Attribute) and node.attr in markers - {"partial_rate"}:
                found.append((node.lineno, ast.unparse(node)))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in {"judge", "partial_rate"}:
                found.append((node.lineno, f"{ast.unparse(node.func)}(...)"))
        return [f"line {line}: {what}" for line, what in sorted(found)]

    # the rule can fail, and passes what the meter's users write
    assert len(offences("from rosi.judges import is_refusal\nflags = list(map(is_refusal, replies))")) == 2
    assert offences("rate = markers.refusal_rate(replies)") == ["line 1: markers.refusal_rate"]
    assert offences("verdicts = MarkerJudge().judge(prompts, replies)") == ["line 1: MarkerJudge().judge(...)"]
    assert offences("p = partial_rate(r)\nq = rate.partial_rate()") == ["line 1: partial_rate", "line 2: rate.partial_rate(...)"]
    ok = "rate = meter.rate(prompts, 64)\nx = (rate.value, rate.partial_rate, args.judge, meter.judged(prompts, replies).value)"
    assert offences(ok) == []

    root = SRC.parents[1]
    exempt = (SRC / "measure", SRC / "judges")
    files = [p for p in SRC.rglob("*.py") if not p.is_relative_to(exempt[0]) and not p.is_relative_to(exempt[1])]
    files += sorted((root / "benchmarks").glob("*.py")) + sorted((root / "examples").rglob("*.py"))
    assert any(p.parent.name == "benchmarks" for p in files) and any(p.parent.name == "examples" for p in files)
    found = {p.relative_to(root).as_posix(): o for p in files if (o := offences(p.read_text(encoding="utf-8")))}
    assert not found, f"refusal measured outside rosi.measure (use RefusalMeter or rosi.measure.judged): {found}"


MAX_FUNCTION_LINES = 60  # outside rosi.cli, whose command functions read top to bottom
MAX_CLI_MODULE_LINES = 300
# Functions that read straight through past the cap, each with its own cap and the reason: a
# function cut to fit (a helper split off mid-thought, lines crammed) reads worse than one a little
# longer. Keep the list short; an entry that no longer needs its room fails the test.
LONG_FUNCTIONS = {
    # check the inputs, edit each writer, record: one pass, and its docstring is the reference for
    # every method's arguments (the checks were once split off into a helper only to fit)
    "rosi.edit.apply.apply_edit": 70,
}


def test_functions_and_cli_modules_stay_small():
    long: list[str] = []
    exempt_used: dict[str, int] = {}
    for module, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if module.startswith("rosi.cli"):
            if len(path.read_text(encoding="utf-8").splitlines()) >= MAX_CLI_MODULE_LINES:
                long.append(f"{module}: {MAX_CLI_MODULE_LINES}+ lines; split it by command family")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name, lines = f"{module}.{node.name}", node.end_lineno - node.lineno + 1
                cap = LONG_FUNCTIONS.get(name, MAX_FUNCTION_LINES)
                if lines > cap:
                    long.append(f"{name}: {lines} lines (at most {cap})")
                elif name in LONG_FUNCTIONS:
                    exempt_used[name] = lines
    unneeded = [f"{name}: {n} lines, within the cap" for name, n in exempt_used.items() if n <= MAX_FUNCTION_LINES]
    missing = set(LONG_FUNCTIONS) - exempt_used.keys()
    assert not long and not unneeded and not missing, "\n".join(long + unneeded + [f"{m}: no such function" for m in sorted(missing)])
