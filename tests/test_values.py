"""Values, not strings, past the boundary: the CLI turns --method into the registry's entry and
--judge into a judge once; below it nothing compares a method's name, and a judge server is asked
once per command before any work."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import rosi
from conftest import tiny_model
from rosi.cli import main
from rosi.direction.vector import Direction
from rosi.edit.apply import apply_edit, revert_edit
from rosi.edit.methods import EFFECT_STRENGTH, METHODS, STRENGTH_GRID, EditForm, Method, method_of
from rosi.errors import EditError
from test_hostile_judges import _content, _Server, server, world  # noqa: F401 - fixtures, shared with the hostile judge tests
from test_hostile_judges import run as run_argv

SRC = Path(rosi.__file__).parent
REGISTRY = SRC / "edit" / "methods.py"
NAMES = frozenset(METHODS) | {m.fit.name for m in METHODS.values() if m.fit is not None}


def random_direction() -> Direction:
    return Direction(torch.randn(32, generator=torch.Generator().manual_seed(1)) * 3, layer=1, position=-1, model="tiny")


def _tool_key(node: ast.AST) -> bool:
    """``x.get("tool")`` or ``x["tool"]``: the file's writer, whose name ``rosi`` is also the paper's method's."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
        node = node.args[0]
    elif isinstance(node, ast.Subscript):
        node = node.slice
    else:
        return False
    return isinstance(node, ast.Constant) and node.value == "tool"


def name_comparisons(source: str) -> list[str]:
    """Comparisons (``==``, ``!=``, ``in``, ``match``) of anything with a method's or a fit's name,
    written as a string constant or in a tuple, list or set of them."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant) and node.value.value in NAMES:
            found.append(f"{node.lineno}: case {node.value.value!r}")
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        if any(_tool_key(side) for side in sides):
            continue
        for side in sides:
            items = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            if any(isinstance(c, ast.Constant) and c.value in NAMES for c in items):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
                break
    return found


def test_no_method_name_is_compared_outside_the_registry():
    """What differs by form is a field or function of its entry in :data:`METHODS`: adding a form
    is one entry (and its pure fit function), with no ``if name == ...`` anywhere else."""
    offences = [
        f"{path.relative_to(SRC)}:{hit}"
        for path in sorted(SRC.rglob("*.py"))
        if path != REGISTRY
        for hit in name_comparisons(path.read_text())
    ]
    assert not offences, "compare the registry entry's fields, not its name:\n" + "\n".join(offences)


def test_the_scan_sees_name_comparisons():
    source = """
if form == "gate": pass
if spec.fit != "neurons": pass
if method in ("scale", "rosi"): pass
if "surgical" not in chosen: pass
match name:
    case "probe": pass
if data.get("tool") == "rosi": pass
if kind == "mlp" or x in ("a", "b"): pass
"""
    assert [hit.split(":")[0] for hit in name_comparisons(source)] == ["2", "3", "4", "5", "7"]


def test_the_registry_states_its_defaults_once():
    searched = [m for m in METHODS.values() if m.needs_reads]
    assert searched and all(m.grid == STRENGTH_GRID and m.effect_strength == EFFECT_STRENGTH for m in searched)
    assert METHODS["ablate"].grid == () and METHODS["ablate"].effect_strength is None and not METHODS["ablate"].searchable
    text = REGISTRY.read_text()
    assert text.count("effect_strength=2.0") == 0 and text.count("2.5, 3.0, 4.0") == 1


def test_forms_fit_on_samples_are_tried_as_their_mean_input_relative():
    for m in METHODS.values():
        assert m.samples == (m.fit is not None)
        assert m.tried_as is (METHODS["probe"] if m.samples else m)
        assert not m.tried_as.samples and m.tried_as.effect_strength == m.effect_strength


@pytest.mark.parametrize("form", [METHODS["scale"], EditForm("scale", "all"), "scale"], ids=["entry", "edit form", "name"])
def test_apply_edit_takes_the_form_value(form):
    """``apply_edit(model, direction, form, strength)``: the registry's entry, a run's EditForm
    (its method) or, at the Python boundary, a method's name: the same edit."""
    expected, model = tiny_model("llama"), tiny_model("llama")
    direction = random_direction()
    apply_edit(expected, direction, METHODS["scale"], 1.5)
    record = apply_edit(model, direction, form, 1.5, keep_originals=True)
    assert record.method == "scale" and method_of(form) is METHODS["scale"]
    for (name, a), b in zip(model.named_parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b), name
    revert_edit(model, record)


def test_apply_edit_refuses_an_unknown_name_as_before():
    with pytest.raises(EditError, match="unknown method 'nope'; choose one of rosi, scale"):
        apply_edit(tiny_model("llama"), random_direction(), "nope", 1.0)
    assert isinstance(METHODS["gate"], Method)


def test_rosi_run_asks_the_judge_server_once_before_any_work(world, server, capsys):  # noqa: F811 - the imported fixtures
    """The CLI builds the judge of --judge once and hands it down: the server is checked once,
    before the model loads, and the workflow does not check it again. (The server answers no
    verdict, so the command stops at the first judged reply.)"""
    _Server.body = _content("I think so.")
    assert main(run_argv(world, f"openai:{server}")) != 0
    assert "gave no verdict" in capsys.readouterr().err
    assert _Server.asked[0] == "GET" and _Server.asked.count("GET") == 1 and "POST" in _Server.asked
