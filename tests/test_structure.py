"""Structure the design relies on (DESIGN.md, "Where each part lives"), checked on the code."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_god_functions_in_the_training_loops():
    long = [(p.name, name, n) for p in (ROOT / "vptr" / "train").glob("*.py")
            for name, n in _functions(p) if n > 60]
    assert not long, long
    for name in ("pretrain_loop.py", "finetune_loop.py"):
        loop = dict(_functions(ROOT / "vptr" / "train" / name))["train"]
        assert loop <= 50, f"the {name} train() is {loop} lines: it should fit on one screen"


def _imports(package: Path) -> set[str]:
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
    return names


def test_diagnostics_nets_and_run_files_import_no_training_code():
    for part in ("diagnostics", "nets", "pretrain", "data", "finetune"):
        bad = {m for m in _imports(ROOT / "vptr" / part) if m.startswith("vptr.train")}
        assert not bad, (part, bad)
    code = ("import sys; import vptr.diagnostics.evaluate, vptr.diagnostics.heldout, "
            "vptr.nets.weights, vptr.runs, vptr.finetune.policy, vptr.evaluate; "
            "print([m for m in sys.modules if m.startswith('vptr.train')])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])
