"""The package's layers: what each may import, and a wheel that works outside the checkout."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "guppyforge"

# Using the persona and dataset layers, end to end, must not load the model's or the CLI's stack.
LIGHT_USE = """
import sys
from guppyforge import load_persona, generate_dataset
from guppyforge import cards
from guppyforge.apps import text
from guppyforge.persona import starter
from guppyforge.persona.conversations import Sampler
from guppyforge.persona.schema import validate_persona
from guppyforge.files import builtin_persona

persona = load_persona(builtin_persona("cat"))
Sampler(persona, seed=1).conversation(0, 2, None)
validate_persona(builtin_persona("guppy"))
cards.persona_to_card(persona)
text.list_builtin()
text.list_builtin()
generate_dataset("cat", sys.argv[1], n=300, seed=1, progress=False)
heavy = sorted(m for m in ("torch", "click", "datasets") if m in sys.modules)
print("loaded:", heavy)
"""


def test_persona_and_dataset_layers_leave_torch_and_click_unloaded(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", LIGHT_USE, str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "loaded: []", out.stdout + out.stderr


def imports_of(path: Path) -> set[str]:
    """Every guppyforge module a file imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


# Each may import only those before it. A layer is a package, or one module (cards.py).
LAYERS = ["persona", "cards", "dataset", "model", "train", "evaluate", "apps"]


def layer_files(layer: str) -> list[Path]:
    module = PACKAGE / f"{layer}.py"
    return [module] if module.exists() else sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_before_it(layer):
    later = LAYERS[LAYERS.index(layer) + 1 :]
    for path in layer_files(layer):
        for name in imports_of(path):
            for other in later:
                assert not name.startswith(f"guppyforge.{other}"), f"{path}: imports {name}"
            if layer != "apps":
                assert name.split(".")[0] != "click", f"{path}: only the CLI imports click"
            if layer in ("persona", "cards", "dataset"):
                assert name.split(".")[0] not in ("torch", "click"), f"{path}: imports {name}"


def test_only_the_cli_modules_import_click():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name.startswith("cli"):
            continue
        assert not any(n.split(".")[0] == "click" for n in imports_of(path)), path


def test_every_module_reads_in_one_sitting():
    # One concept per file, never split to fit a count; ~600 lines is where a concept has grown
    # into two (nanochat's gpt.py is 555).
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 600, f"{path}: {lines} lines"


# --- the wheel ---------------------------------------------------------------------------------


def run(cmd: list, cwd: Path, timeout: int = 300) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to copy the checkout")
def test_a_wheel_installed_elsewhere_runs_the_pipeline(tmp_path):
    """Build a wheel, install it into a fresh venv, and use it from a folder outside the checkout.

    The venv gets the wheel alone; its dependencies (torch, datasets...) come from this test's
    own environment through a .pth line, so nothing is downloaded and nothing of the checkout
    is importable: an editable install's finder is not a site dir there, only a path entry.
    """
    source = tmp_path / "src"  # a clean copy: no build/ or egg-info from an editable install
    files = run(["git", "ls-files", "-co", "--exclude-standard"], REPO).split()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels,
         source], tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("guppyforge-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path
    )
    Path(purelib.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         wheel], tmp_path)  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    cli = env_dir / "bin" / "guppyforge"
    where = run([python, "-c", "import guppyforge; print(guppyforge.__file__)"], work)
    assert str(env_dir) in where  # the wheel's copy, not the checkout
    sizes = run([python, "-c", "from guppyforge.persona.conversations import pool; "
                 "print(len(pool('train')), len(pool('heldout')))"], work).split()  # fmt: skip
    assert int(sizes[0]) >= 260 and int(sizes[1]) >= 80, sizes  # the pool ships in the wheel
    listed = run([cli, "personas"], work)
    assert all(name in listed for name in ("guppy", "cat", "lighthouse")), listed
    run([cli, "new-persona", "pip"], work)
    assert "ok" in run([cli, "validate", "pip.yaml"], work)
    run([cli, "generate", "pip.yaml", "-n", "2000", "--out", "data", "-q"], work)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [cli, "train", "data", "--out", "run", "--preset", "micro", "--max-steps", "20", "-q"],
        cwd=work, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    reply = run([cli, "chat", "run", "--prompt", "hi", "--temperature", "0"], work)
    assert reply.strip()


def test_the_wheel_lists_every_package_of_the_tree():
    # pyproject.toml names the packages one by one; a folder left out is missing from the wheel.
    import tomllib

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
