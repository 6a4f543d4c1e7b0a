"""The package's layers: what each may import, and a wheel that works outside the checkout."""

from __future__ import annotations

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


# --- the layers: pyproject.toml's import-linter contracts ---------------------------------------


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(root)}  # the package found first is the one at root
    return subprocess.run(
        [str(lint), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120, env=env
    )


def test_the_layers_keep_their_contracts():
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and "Contracts: 4 kept" in out.stdout, out.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("persona/types.py", "from guppyforge.apps import cli", "imports only the layers below"),
        ("apps/chat.py", "import guppyforge.train.loop", "import the trainer"),
        ("dataset/split.py", "import torch", "never import torch or click"),
    ],
)
def test_an_import_against_the_layers_breaks_a_contract(tmp_path, module, line, broken):
    shutil.copytree(PACKAGE, tmp_path / "guppyforge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / "guppyforge" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    out = lint_imports(tmp_path)
    assert out.returncode != 0, out.stdout
    report = out.stdout.partition("Broken contracts")[2].replace("\n", " ")
    chain = (
        f"guppyforge.{module[:-3].replace('/', '.')} -> "  # the import is named, from its module
    )
    assert broken in report and chain in report, out.stdout


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
