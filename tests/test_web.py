"""`guppyforge export --to web`: a page that chats with the character in a real browser.

What a user would notice: the page served by `python -m http.server` shows the character,
streams replies, and at temperature 0 says exactly what `guppyforge chat --temperature 0` says,
without one request leaving the page's own folder.

The page is serve's too (guppyforge/apps/page, test_serve_page.py): here with its browser.js
backend. Needs Debian's `chromium`, the `playwright` Python package and the page's JavaScript
(scripts/test-setup.sh installs all three; a missing one fails).
GUPPYFORGE_WEB_SCREENSHOT=docs/web-chat.png saves a screenshot of the chat.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.apps.export import export_run, prepare_out_dir
from guppyforge.apps.export.web import RUNTIME_ENV, find_runtime, install_runtime
from guppyforge.errors import GuppyError
from guppyforge.files import write_marker
from guppyforge.model.engine import Engine
from guppyforge.model.run import load_run

CHROMIUM = "/usr/bin/chromium"
# Flags for a quiet, offline, container-friendly headless Chromium.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STATE = "document.getElementById('status').dataset.state"
PROMPTS = ["are you hungry", "hello", "hi there", "where do you live"]


def _needs_browser() -> None:
    # scripts/test-setup.sh installs both: a missing one fails here rather than skipping.
    assert Path(CHROMIUM).is_file(), f"no {CHROMIUM}: apt-get install -y chromium"
    assert find_runtime(install=False) is not None, "no transformers.js: bash scripts/test-setup.sh"


@contextlib.contextmanager
def served(folder: Path):
    """`python -m http.server -d folder` on a free port, in a thread: yields the base URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class ChatPage:
    """The exported page in headless Chromium, driven as a user would."""

    def __init__(self, browser, url: str):
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 760, "height": 640})
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.page.wait_for_function(f"{STATE} !== 'loading'", timeout=120_000)
        assert self.page.get_attribute("#status", "data-state") == "ready", self.status

    @property
    def status(self) -> str:
        return self.page.inner_text("#status")

    def set_temperature(self, value: float) -> None:
        self.page.eval_on_selector(
            "#temperature", f"e => {{ e.value = {value}; e.dispatchEvent(new Event('input')); }}"
        )

    def say(self, text: str) -> str:
        self.page.fill("#prompt", text)
        self.page.click("#send")
        self.page.wait_for_function(
            f"{STATE} !== 'busy' && !document.getElementById('send').disabled", timeout=120_000
        )
        assert self.page.get_attribute("#status", "data-state") == "ready", self.status
        return self.page.locator(".assistant").last.inner_text()

    def new_chat(self) -> None:
        self.page.click("#new-chat")


@pytest.fixture(scope="module")
def browser():
    _needs_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _export(run_dir: Path, out: Path, fp32: bool) -> Path:
    _needs_browser()
    result = CliRunner().invoke(
        cli, ["export", str(run_dir), "--to", "web", "--out", str(out), *(["--fp32"] * fp32)]
    )
    assert result.exit_code == 0, result.output
    assert "python -m http.server -d" in result.output
    return out


@pytest.fixture(scope="module")
def web_fp32(micro_run, tmp_path_factory) -> Path:
    return _export(micro_run, tmp_path_factory.mktemp("web") / "fp32", fp32=True)


@pytest.fixture(scope="module")
def web_int8(micro_run, tmp_path_factory) -> Path:
    return _export(micro_run, tmp_path_factory.mktemp("web") / "int8", fp32=False)


def cli_reply(run_dir: Path, prompt: str) -> str:
    printed = CliRunner().invoke(
        cli, ["chat", str(run_dir), "--prompt", prompt, "--temperature", "0"]
    )
    assert printed.exit_code == 0, printed.output
    return printed.output.removesuffix("\n")


def test_folder_holds_the_page_the_model_and_the_runtime(web_int8, web_fp32):
    names = {p.relative_to(web_int8).as_posix() for p in web_int8.rglob("*") if p.is_file()}
    assert {"index.html", "ui.js", "browser.js", "page.json", "character/config.json"} <= names
    assert "server.js" not in names  # serve's backend: nothing here to ask
    assert {"character/tokenizer.json", "character/tokenizer_config.json"} <= names
    assert {"runtime/transformers.min.js", "runtime/ort-wasm-simd-threaded.wasm"} <= names
    assert (
        "character/onnx/model_quantized.onnx" in names and "character/onnx/model.onnx" not in names
    )
    assert (web_fp32 / "character/onnx/model.onnx").is_file()
    assert not (web_fp32 / "character/onnx/model_quantized.onnx").exists()
    settings = json.loads((web_int8 / "page.json").read_text())
    assert (settings["name"], settings["summary"]) == ("Finn", "A tiny fish for tests.")
    assert settings["backend"] == "browser"
    assert json.loads((web_fp32 / "page.json").read_text())["dtype"] == "fp32"


def test_fp32_page_says_what_chat_says_at_temperature_0(browser, web_fp32, micro_run):
    with served(web_fp32) as url:
        page = ChatPage(browser, url)
        assert page.page.inner_text("#name") == "Finn"
        assert page.page.inner_text("#summary") == "A tiny fish for tests."
        page.set_temperature(0)
        for prompt in PROMPTS:
            page.new_chat()
            assert page.say(prompt) == cli_reply(micro_run, prompt), prompt
        # A second turn: the page keeps the conversation, windowed as `chat` does.
        history = [{"role": "user", "content": PROMPTS[-1]}]
        history.append({"role": "assistant", "content": cli_reply(micro_run, PROMPTS[-1])})
        history.append({"role": "user", "content": "and then?"})
        assert page.say("and then?") == Engine.from_run(load_run(micro_run)).reply(
            history, temperature=0
        )
        assert int(page.page.get_attribute("#status", "data-tokens")) > 0
        if os.environ.get("GUPPYFORGE_WEB_SCREENSHOT"):
            page.page.screenshot(path=os.environ["GUPPYFORGE_WEB_SCREENSHOT"])
        # Every file came from the served folder: nothing from the Hub or a CDN.
        assert all(r.startswith(url) or r.startswith("blob:") for r in page.requests), page.requests
        assert not page.errors, page.errors


def test_int8_page_replies_and_samples(browser, web_int8, micro_run):
    with served(web_int8) as url:
        page = ChatPage(browser, url)
        assert "q8" in page.status
        page.set_temperature(0)
        # Greedy int8 replies need not equal chat's: measured on this fixture, 5 of 6 prompts
        # agree, and "hi there" stops one sentence early in the browser (a near-tie between
        # "." + more and the end token, where onnxruntime's CPU and WebAssembly int8 kernels
        # part ways). fp32 is the exact one, tested above; here a reply must come at all.
        assert page.say(PROMPTS[0]).strip()
        page.new_chat()
        page.set_temperature(1.0)
        page.page.fill("#top-k", "5")
        assert page.say(PROMPTS[0]).strip()
        assert not page.errors, page.errors


# --- finding the JavaScript ---------------------------------------------------------------------


def test_a_wrong_runtime_folder_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(RUNTIME_ENV, str(tmp_path))
    with pytest.raises(GuppyError, match=f"{RUNTIME_ENV}=.*transformers.min.js"):
        find_runtime()


def test_no_npm_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GuppyError, match="npm was not found"):
        install_runtime(tmp_path / "cache")


def test_force_replaces_an_earlier_web_export_and_keeps_the_users_files(micro_run, tmp_path):
    out = tmp_path / "site"
    (out / "runtime").mkdir(parents=True)
    (out / "runtime" / "old.js").write_text("from an earlier export")
    write_marker(out, "export", ["runtime/old.js"])  # the earlier export listed it
    with pytest.raises(GuppyError, match="--force"):
        prepare_out_dir(Path(micro_run), out, force=False)
    prepare_out_dir(Path(micro_run), out, force=True).clear()
    assert not (out / "runtime" / "old.js").exists()  # stale runtime files go
    (out / "runtime" / "mine.js").write_text("the user's own file")  # a name export may write
    with pytest.raises(GuppyError, match="never replaces them"):
        prepare_out_dir(Path(micro_run), out, force=True)
    assert (out / "runtime" / "mine.js").read_text() == "the user's own file"


def test_fp32_is_only_for_web(micro_run, tmp_path):
    with pytest.raises(GuppyError, match="--fp32 only applies to --to web"):
        export_run(micro_run, "onnx", tmp_path / "x", fp32=True)
