"""The code rules of CONTRIBUTING.md that a machine can check.

* pyflakes' rules (ruff ``F``: unused imports and names, undefined names, shadowed loop
  variables) over the package, the tests, scripts and benchmarks;
* library code raises, front ends talk: ``print``, ``exit``/``sys.exit`` only in the front-end
  modules (``cli.py``, ``_cli*.py``) and in the ``main``/``run_from_args`` entry points and
  ``if __name__ == "__main__":`` blocks of the ``python -m`` trainers; no bare ``except:`` anywhere in the package.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "identitydp"
ENTRY_POINTS = {"main", "run_from_args"}


def _ruff() -> str:
    local = Path(sys.executable).with_name("ruff")
    found = str(local) if local.exists() else shutil.which("ruff")
    if found is None:  # a test extra: `pip install -e .[test]` brings it
        pytest.fail("ruff is not installed (pip install -e '.[test]')")
    return found


def test_pyflakes_rules_pass_on_the_whole_tree():
    out = subprocess.run([_ruff(), "check", "--select", "F", "--no-cache", "--output-format", "concise",
                          "src", "tests", "scripts", "benchmarks"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def _is_front_end(path: Path) -> bool:
    return path.name == "cli.py" or path.name.startswith("_cli")


def _talking_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of print / exit / quit / sys.exit calls outside the trainers' entry points."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_entry_point: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_entry_point = in_entry_point or node.name in ENTRY_POINTS
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):  # `if __name__ == "__main__":`
            in_entry_point = True
        if isinstance(node, ast.Call) and not in_entry_point:
            f = node.func
            if isinstance(f, ast.Name) and f.id in ("print", "exit", "quit"):
                found.append((node.lineno, f.id))
            elif (isinstance(f, ast.Attribute) and f.attr == "exit"
                  and isinstance(f.value, ast.Name) and f.value.id == "sys"):
                found.append((node.lineno, "sys.exit"))
        for child in ast.iter_child_nodes(node):
            visit(child, in_entry_point)

    visit(tree, False)
    return found


def test_library_code_neither_prints_nor_exits():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if _is_front_end(path):
            continue
        for line, name in _talking_calls(ast.parse(path.read_text(), filename=str(path))):
            offenders.append(f"{path.relative_to(REPO)}:{line}: {name}()")
    assert not offenders, "library code must raise, not print or exit:\n" + "\n".join(offenders)


def test_no_bare_except_in_the_package():
    offenders = [f"{path.relative_to(REPO)}:{node.lineno}"
                 for path in sorted(PACKAGE.rglob("*.py"))
                 for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
                 if isinstance(node, ast.ExceptHandler) and node.type is None]
    assert not offenders, "bare except: " + ", ".join(offenders)


def test_the_rule_checker_sees_a_print_in_library_code():
    # The checker itself: a print in a helper is caught, one in a trainer's main() is allowed.
    tree = ast.parse("def helper():\n    print('x')\n\ndef main():\n    print('ok')\n    sys.exit(0)\n"
                     "if __name__ == '__main__':\n    sys.exit(main())\nexit(1)\n")
    assert _talking_calls(tree) == [(2, "print"), (9, "exit")]
