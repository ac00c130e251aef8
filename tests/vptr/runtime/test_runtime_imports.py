"""The runtime and the HAL import no training code and never unpickle (DESIGN.md)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TRAINING = ("vptr.train", "vptr.finetune", "vptr.pretrain", "vptr.data")


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_no_training_imports_and_no_pickle_in_the_source():
    for folder in (ROOT / "vptr" / "runtime", ROOT / "robots"):
        for path in folder.rglob("*.py"):
            for name in _imports(path):
                assert not name.startswith(TRAINING), (path, name)
                assert name.split(".")[0] not in ("pickle", "dill", "cloudpickle", "joblib"), (path, name)
            assert "torch.load(" not in path.read_text(), path


def test_importing_the_runtime_and_every_backend_loads_no_training_module():
    code = ("import sys; import vptr.runtime, vptr.runtime.artifact, vptr.runtime.reference, "
            "vptr.runtime.recording, robots.mock, "
            "robots.sim_arm, robots.ur, robots.lerobot_adapter; "
            f"print(sorted(m for m in sys.modules if m.startswith({TRAINING!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


def test_the_ur_backend_does_not_import_its_sdk_until_it_connects():
    code = "import sys, robots.ur; print('rtde_control' in sys.modules, 'lerobot' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.stdout.split() == ["False", "False"], r.stderr[-2000:]
