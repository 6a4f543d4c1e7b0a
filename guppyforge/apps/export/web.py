"""Export a run as a static web page that chats with the character in the browser.

    guppyforge export runs/cat --to web --out cat-web
    python -m http.server -d cat-web        # then open http://localhost:8000

DIR/index.html, ui.js,    the chat page `guppyforge serve` shows too (copied from apps/page/),
    browser.js            with the backend that runs the model here instead of asking a server
DIR/page.json             the page's settings: the persona's name, summary and greeting, the
                          sampling defaults, and what browser.js needs to load the model
DIR/character/            a transformers.js model folder: config.json, generation_config.json,
                          tokenizer files (with the chat template), onnx/model_quantized.onnx
                          (int8, the default) or onnx/model.onnx (fp32), and the inside view's
                          graph beside it, onnx/inside_quantized.onnx or onnx/inside.onnx: logits
                          and attention weights of a whole conversation, loaded on the first
                          click on a token
DIR/runtime/              transformers.js and onnxruntime-web's WebAssembly build, plus licenses

Nothing is fetched from the network when the page runs. The JavaScript comes from npm at export
time, pinned by apps/page/package-lock.json and never committed: see `find_runtime`. Only the
two packages' tarballs are fetched, and only the files above kept (~15 MB): not the Node-side
packages (onnxruntime-node, sharp) that `npm ci` would add for transformers.js.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from guppyforge.apps.export.hf import generation_config, gpt2_config
from guppyforge.apps.export.onnx import export_inside_onnx, export_model_onnx, quantize_int8
from guppyforge.defaults import MAX_NEW_TOKENS, TEMPERATURE, TOP_K
from guppyforge.errors import GuppyError
from guppyforge.model.run import Run
from guppyforge.model.tokenizer import save_tokenizer

# The chat page of `guppyforge serve` too: the export leaves out its server.js backend.
WEB_DIR = Path(__file__).resolve().parents[1] / "page"
PAGE_FILES = ("index.html", "ui.js", "browser.js")
RUNTIME_ENV = "GUPPYFORGE_WEB_RUNTIME"

# What the page loads from node_modules. transformers.min.js bundles everything it imports
# (onnxruntime-web's JavaScript, the tokenizers, Jinja for the chat template) except the
# WebAssembly binary and its loader, which onnxruntime-web ships.
RUNTIME_FILES = (
    "@huggingface/transformers/dist/transformers.min.js",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
)
PACKAGES = ("@huggingface/transformers", "onnxruntime-web")  # where RUNTIME_FILES come from


def _has_runtime(node_modules: Path) -> bool:
    return all((node_modules / f).is_file() for f in RUNTIME_FILES)


def cache_dir() -> Path:
    """Where `export --to web` installs the JavaScript once, keyed by the lock file's content."""
    lock = hashlib.sha256((WEB_DIR / "package-lock.json").read_bytes()).hexdigest()[:12]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "guppyforge" / f"web-runtime-{lock}"


def find_runtime(install: bool = True) -> Path | None:
    """The node_modules folder to copy the page's JavaScript from.

    Looked for in order: $GUPPYFORGE_WEB_RUNTIME (a node_modules folder, or the folder holding
    one), WEB_DIR/node_modules (a checkout after `npm ci --prefix guppyforge/apps/page`), the
    user cache. With `install`, a missing runtime is installed into the cache (once; needs npm
    and the npm registry: see `install_runtime`); otherwise None.
    """
    if os.environ.get(RUNTIME_ENV):
        given = Path(os.environ[RUNTIME_ENV]).expanduser()
        for folder in (given, given / "node_modules"):
            if _has_runtime(folder):
                return folder
        raise GuppyError(
            f"${RUNTIME_ENV}={given}: no {RUNTIME_FILES[0]} there. Point it at the node_modules "
            f"of `npm ci` run in a copy of {WEB_DIR}, or unset it to let guppyforge install it."
        )
    for folder in (WEB_DIR / "node_modules", cache_dir() / "node_modules"):
        if _has_runtime(folder):
            return folder
    return install_runtime(cache_dir()) if install else None


def locked_packages() -> dict[str, tuple[str, str]]:
    """{package: (version, integrity)} of PACKAGES, as package-lock.json pins them."""
    lock = json.loads((WEB_DIR / "package-lock.json").read_text())["packages"]
    return {
        p: (lock[f"node_modules/{p}"]["version"], lock[f"node_modules/{p}"]["integrity"])
        for p in PACKAGES
    }


def _integrity(tarball: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()


def install_runtime(dest: Path) -> Path:
    """The locked tarballs of PACKAGES from npm (`npm pack`: the user's registry, proxy and
    cache), checked against the lock's integrity; only the page's files, each package's
    package.json and LICENSE are kept, under dest/node_modules. Returns that node_modules."""
    npm = shutil.which("npm")
    if npm is None:
        raise GuppyError(
            "--to web needs transformers.js from npm, and npm was not found. Install Node.js "
            f"(it brings npm), or set ${RUNTIME_ENV} to a node_modules that has it."
        )
    print(f"installing the browser runtime (transformers.js) into {dest}, once", file=sys.stderr)
    tmp = dest.with_name(dest.name + ".partial")  # renamed when complete: never half a runtime
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "tarballs").mkdir(parents=True)
    locked = locked_packages()
    specs = [f"{name}@{version}" for name, (version, _) in locked.items()]
    # --ignore-scripts: a registry tarball has nothing to build; fetching is all that happens.
    args = ["pack", *specs, "--json", "--ignore-scripts", "--pack-destination", "tarballs"]
    done = subprocess.run([npm, *args, "--loglevel=error"], cwd=tmp, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise GuppyError(
            f"npm pack in {tmp} failed ({last}). Check the network to the npm registry, or set "
            f"${RUNTIME_ENV} to a node_modules that has transformers.js."
        )
    for packed, (name, (_, integrity)) in zip(json.loads(done.stdout), locked.items(), strict=True):
        tarball = tmp / "tarballs" / packed["filename"]
        if _integrity(tarball) != integrity:
            raise GuppyError(
                f"{tarball.name} from npm does not match {WEB_DIR / 'package-lock.json'}'s "
                "integrity. Check the registry npm uses (npm config get registry)."
            )
        keep = [f[len(name) + 1 :] for f in RUNTIME_FILES if f.startswith(name + "/")]
        with tarfile.open(tarball) as archive:
            members = {
                m.name.removeprefix("package/"): m for m in archive.getmembers() if m.isfile()
            }
            for rel in [*keep, "package.json", "LICENSE"]:
                if rel in members:  # a LICENSE may be missing; the page's files are checked below
                    target = tmp / "node_modules" / name / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.extractfile(members[rel]).read())
    shutil.rmtree(tmp / "tarballs")
    if not _has_runtime(tmp / "node_modules"):
        raise GuppyError(f"npm's {', '.join(specs)} lack one of {', '.join(RUNTIME_FILES)}.")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest / "node_modules"


def copy_runtime(node_modules: Path, out: Path) -> list[Path]:
    """The runtime files into `out`, with the license of each package they come from."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for rel in RUNTIME_FILES:
        files.append(out / Path(rel).name)
        shutil.copyfile(node_modules / rel, files[-1])
    notice = ["The files in this folder come from these npm packages:\n"]
    for package in PACKAGES:
        meta = json.loads((node_modules / package / "package.json").read_text())
        notice.append(f"- {meta['name']} {meta['version']} ({meta.get('license', '?')})")
        if (node_modules / package / "LICENSE").is_file():
            files.append(out / f"LICENSE-{package.split('/')[-1]}.txt")
            shutil.copyfile(node_modules / package / "LICENSE", files[-1])
    files.append(out / "NOTICE.txt")
    files[-1].write_text("\n".join(notice) + "\n")
    return files


def page_settings(run: Run, dtype: str) -> dict:
    """page.json: what the page shows, its sampling defaults (those of `guppyforge chat`), and
    what browser.js needs to load the model (the same fields serve's page.json has, and more)."""
    identity = {
        "name": (run.config.get("persona") or {}).get("name") or run.path.name,
        "summary": "",
        "first_message": "",
    }
    if run.persona_path.is_file():
        from guppyforge.cards import page_identity
        from guppyforge.persona.schema import load_persona

        identity = page_identity(load_persona(run.persona_path))  # as serve's page shows it
    return {
        "backend": "browser",
        **identity,
        "model": "character",
        "dtype": dtype,
        "parameters": run.model.num_params(),
        "context": run.model.cfg.context,
        "max_new_tokens": MAX_NEW_TOKENS,
        "temperature": TEMPERATURE,
        "top_k": TOP_K,
    }


def write_character(run: Run, out: Path, int8: bool) -> list[Path]:
    """The model folder transformers.js loads: GPT-2 config files, tokenizer, ONNX decoder, and
    the inside view's graph in the same number format (its numbers are the decoder's)."""
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    files = []
    for name, export in (("model", export_model_onnx), ("inside", export_inside_onnx)):
        fp32 = out / "onnx" / f"{name}.onnx"
        export(run.model, fp32)
        if int8:
            # transformers.js' name for dynamic int8 weights ("q8"); the fp32 file is not shipped.
            files.append(out / "onnx" / f"{name}_quantized.onnx")
            quantize_int8(fp32, files[-1])
            fp32.unlink()
        else:
            files.append(fp32)
    # transformers.js_config: any transformers.js app loading this folder picks the right file.
    config = gpt2_config(run) | {"transformers.js_config": {"dtype": "q8" if int8 else "fp32"}}
    files += [out / "config.json", out / "generation_config.json"]
    files[-2].write_text(json.dumps(config, indent=2) + "\n")
    files[-1].write_text(json.dumps(generation_config(run), indent=2) + "\n")
    return files + save_tokenizer(run.tokenizer, out, run.model.cfg.context)


README = """# {name}, in your browser

A tiny character language model made with guppyforge, running entirely in the browser
(transformers.js on WebAssembly; nothing leaves the page). Serve this folder and open it:

    python -m http.server -d . 8000     # then http://localhost:8000

Any static host works (GitHub Pages, a Hugging Face static Space). Opening index.html as a
file:// URL does not: browsers refuse to load modules and WebAssembly from files.
"""


def export_web(run: Run, out: Path, *, int8: bool = True) -> list[Path]:
    """Write the page, its settings, the model (int8 unless `int8=False`) and the runtime."""
    node_modules = find_runtime()  # first: a missing npm should fail before the slow export
    settings = page_settings(run, "q8" if int8 else "fp32")
    files = write_character(run, out / "character", int8)
    files += copy_runtime(node_modules, out / "runtime")
    for name in PAGE_FILES:
        files.append(out / name)
        shutil.copyfile(WEB_DIR / name, files[-1])
    files.append(out / "page.json")
    files[-1].write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
    files.append(out / "README.md")
    files[-1].write_text(README.format(name=settings["name"]))
    return files
