"""The architecture, checked: layers import one way only, across subpackages only through their
public ``__init__``, and each boundary of DESIGN.md holds (octtrain never imports optuna or
search; only octtrain's runtime layer imports torch_xla; Optuna's private names only in
``search/optuna_compat.py``). Every import counts, including lazy ones inside functions and
those under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A unit (a subpackage, or a module at a package's top) may import units of lower
# layers only; units in the same layer are peers and import neither each other.
LAYERS = {
    "octtrain": [
        ["octtrain.errors", "octtrain.callback", "octtrain.lazy"],
        ["octtrain.files"],  # a write the host fails is an octtrain.errors.HostError
        ["octtrain.config"],
        ["octtrain.data", "octtrain.synthetic", "octtrain.model", "octtrain.runtime", "octtrain.tracking"],
        ["octtrain.train"],
        ["octtrain.cli", "octtrain.__init__"],
    ],
    "search": [
        ["search.errors", "search.optuna_compat", "search.notices", "search.interrupts", "search.ranking"],
        ["search.contract"],  # writes system attributes through search.optuna_compat
        ["search.storage", "search.pruning"],
        ["search.space"],
        ["search.study"],
        ["search.trial"],
        ["search.review", "search.worker"],
        ["search.cli", "search.__init__"],
    ],
}
# Optuna names that are private (a leading underscore anywhere in the dotted path or attribute).
PRIVATE_OPTUNA = re.compile(r"\._storage\b|\._trial_id\b|_get_latest_trial|optuna\.storages\._|"
                            r"_CachedStorage|_read_trials_from_remote_storage|_get_stale_trial_ids|optuna\._|"
                            r"optuna\.trial\._")
COMPAT = "search/optuna_compat.py"


def _modules() -> list[Path]:
    return sorted(p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py"))


def _name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _unit(module: str) -> str:
    """``octtrain.data.records`` -> ``octtrain.data``; ``search.cli`` -> ``search.cli``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else f"{parts[0]}.__init__"


def _layer(unit: str) -> int:
    for i, units in enumerate(LAYERS[unit.split(".")[0]]):
        if unit in units:
            return i
    raise AssertionError(f"{unit} is in no layer of tests/test_layers.py: add it to LAYERS")


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name, []) for a in node.names)
    return found


def _code_lines(text: str) -> dict[int, str]:
    """Each line's code without its strings and comments (so a docstring may name a private API)."""
    lines: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.NAME, tokenize.OP, tokenize.NUMBER):
            lines[tok.start[0]] = lines.get(tok.start[0], "") + tok.string
    return lines


def _is_subpackage(unit: str) -> bool:
    return (ROOT / unit.replace(".", "/") / "__init__.py").exists()


def test_every_unit_has_a_layer_and_each_subpackage_an_all() -> None:
    for path in _modules():
        _layer(_unit(_name(path)))
    for layers in LAYERS.values():
        for unit in (u for layer in layers for u in layer):
            if _is_subpackage(unit):
                tree = ast.parse((ROOT / unit.replace(".", "/") / "__init__.py").read_text())
                assert ast.get_docstring(tree), f"{unit}/__init__.py has no docstring saying what it holds"
                assert any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets)
                           for n in tree.body), f"{unit}/__init__.py has no __all__"


def test_layers_import_one_way_and_through_public_inits() -> None:
    problems = []
    for path in _modules():
        me = _name(path)
        mine = _unit(me)
        for line, module, _ in _imports(path):
            if module.split(".")[0] not in LAYERS:
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            target = _unit(module)
            if target == mine:
                continue
            if target.split(".")[0] != mine.split(".")[0] and mine.startswith("octtrain"):
                problems.append(f"{where}: octtrain imports {module} (the trainer never imports search)")
                continue
            if target.split(".")[0] == mine.split(".")[0] and _layer(target) >= _layer(mine):
                problems.append(f"{where}: {mine} (layer {_layer(mine)}) imports {module} (layer {_layer(target)})")
            if _is_subpackage(target) and module != target:
                problems.append(f"{where}: imports {module}; import {target}'s public names from {target}")
    assert not problems, "\n".join(problems)


def test_boundaries_of_the_design() -> None:
    problems = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        for line, module, _ in _imports(path):
            top = module.split(".")[0]
            if rel.startswith("octtrain/") and top == "optuna":
                problems.append(f"{rel}:{line}: octtrain imports optuna")
            if top == "torch_xla" and not rel.startswith("octtrain/runtime/"):
                problems.append(f"{rel}:{line}: torch_xla outside octtrain/runtime/")
        if rel != COMPAT:
            for number, code in _code_lines(text).items():
                if PRIVATE_OPTUNA.search(code):
                    problems.append(f"{rel}:{number}: Optuna private name outside {COMPAT}: {code.strip()}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("limit", [400])
def test_modules_and_functions_stay_small(limit: int) -> None:
    problems = []
    for path in [*_modules(), *sorted((ROOT / "bench").glob("*.py"))]:
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if text.count("\n") > limit:
            problems.append(f"{rel}: {text.count(chr(10))} lines (at most {limit})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                problems.append(f"{rel}:{node.lineno}: {node.name} is {node.end_lineno - node.lineno + 1} lines")
    assert not problems, "\n".join(problems)
