"""The chat page's inside view, in headless Chromium: click a token of a reply, see its candidates
at temperature 1 and at the page's settings, and where each attention head looked.

With serve (server.js: the numbers come from the server's engine, POST /inside) and in a web
export (browser.js: from the model run in the page, its inside graph). Needs Debian's Chromium,
the `playwright` package and, for the export, the page's JavaScript (scripts/test-setup.sh).
GUPPYFORGE_INSIDE_SCREENSHOT=docs/inside-view.png saves a screenshot of the view.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from click.testing import CliRunner
from conftest import cat_run, serving
from playwright import sync_api

from guppyforge.apps.cli import cli
from guppyforge.apps.export.web import find_runtime
from guppyforge.model.engine import Engine

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)"
)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
HUNGRY = [{"role": "user", "content": "are you hungry"}]


@pytest.fixture(scope="module")
def run(micro_run, tmp_path_factory):
    return cat_run(micro_run, tmp_path_factory.mktemp("cat") / "run")


@pytest.fixture(scope="module")
def server(run):
    with serving(run) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 760, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function(
        "document.getElementById('status').dataset.state !== 'loading'", timeout=120_000
    )
    assert page.get_attribute("#status", "data-state") == "ready", page.inner_text("#status")
    return page, errors


def set_value(page, selector: str, value) -> None:
    """As a user moving a slider or typing a number: the value, then an input event."""
    page.eval_on_selector(
        selector, f"e => {{ e.value = {value}; e.dispatchEvent(new Event('input')); }}"
    )


def rows(page) -> list[dict]:
    return page.eval_on_selector_all("#candidates tr", "rs => rs.map(r => ({...r.dataset}))")


def at_page(logprobs: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """What sampling draws from: softmax(z / T) over the top-k (engine.sample_next's rule)."""
    z = logprobs / temperature
    if 0 < top_k < z.numel():
        z = z.masked_fill(z < torch.topk(z, top_k).values[-1], float("-inf"))
    return torch.softmax(z, -1)


def check_inside_view(page, engine: Engine, messages: list[dict], screenshot: str | None = None):
    """Ask at temperature 0, click tokens of the reply, and check the view's numbers."""
    set_value(page, "#temperature", 0)
    page.locator("#top-k").fill("7")
    page.locator("#prompt").fill(messages[-1]["content"])
    page.locator("#send").click()
    reply = page.locator(".msg.assistant[data-done]").last
    reply.wait_for(timeout=120_000)
    text = reply.inner_text()
    inside = engine.inside(messages, text)
    spans = reply.locator(".tok")
    # The reply is shown as its tokens, which spell it exactly.
    assert spans.count() == len(inside.tokens)
    for index in (0, len(inside.tokens) - 1):
        t = inside.tokens[index]
        set_value(page, "#temperature", 0)
        spans.nth(index).click()
        page.wait_for_function(
            f"document.querySelector('.tok.chosen').dataset.index === '{index}'"
            " && document.getElementById('inside').dataset.ready === 'true'",
            timeout=120_000,
        )
        shown = rows(page)
        probs = torch.exp(t.logprobs)
        top = torch.topk(probs, len(shown))
        # The candidates at T=1 are the engine's, best first; at temperature 0 the drawn one
        # is the top one and takes all the probability.
        names = [engine.tokenizer.decode([i], skip_special_tokens=False) for i in top.indices]
        assert [r["token"] for r in shown] == names  # <|im_end|> too: it could have stopped
        assert (
            max(abs(float(r["p1"]) - p) for r, p in zip(shown, top.values.tolist(), strict=True))
            <= 1e-3
        )
        assert "drawn" in shown[0] and sum("drawn" in r for r in shown) == 1
        assert float(shown[0]["pt"]) == 1.0 and all(float(r["pt"]) == 0 for r in shown[1:])
        # The slider moves the page's column as softmax(z / T) over the top-k does.
        for temperature in (0.5, 1.5):
            set_value(page, "#temperature", temperature)
            want = at_page(t.logprobs, temperature, 7)[top.indices]
            got = [float(r["pt"]) for r in rows(page)]
            assert max(abs(g - w) for g, w in zip(got, want.tolist(), strict=True)) <= 1e-3
            assert got != [float(r["p1"]) for r in shown]
        # Attention: per layer and head, a weight on every earlier token, summing to 1.
        layers = page.eval_on_selector_all("#layer option", "os => os.map(o => o.value)")
        heads = page.eval_on_selector_all("#head option", "os => os.map(o => o.value)")
        assert len(layers) == engine.cfg.n_layer and len(heads) == engine.cfg.n_head + 1
        for layer in layers:
            for head in heads:
                page.select_option("#layer", layer)
                page.select_option("#head", head)
                weights = page.eval_on_selector_all(
                    "#strip .ctx", "s => s.map(e => Number(e.dataset.weight))"
                )
                assert len(weights) == t.position  # the prompt's tokens and the reply's before
                assert sum(weights) == pytest.approx(1.0, abs=1e-4)
                a = t.attention[int(layer)]
                want = a.mean(0) if head == "mean" else a[int(head)]
                assert max(abs(w - v) for w, v in zip(weights, want.tolist(), strict=True)) <= 1e-3
    if screenshot:
        set_value(page, "#temperature", 0.7)
        spans.nth(0).click()
        page.select_option("#layer", "0")
        page.select_option("#head", "mean")
        page.wait_for_selector("#inside[data-ready]")
        page.screenshot(path=screenshot, full_page=True)


def test_serve_page_shows_inside_a_reply(browser, server, run):
    page, errors = open_page(browser, server.url.removesuffix("v1"))
    shot = os.environ.get("GUPPYFORGE_INSIDE_SCREENSHOT")
    check_inside_view(page, Engine.from_run(run), HUNGRY, shot)
    assert errors == []


def test_web_export_shows_inside_a_reply_from_its_own_model_run(browser, run, tmp_path):
    """The numbers come from the page's own ONNX run (fp32 here, to compare with the engine)."""
    assert find_runtime(install=False) is not None, "no transformers.js: bash scripts/test-setup.sh"
    out = tmp_path / "web"
    result = CliRunner().invoke(
        cli, ["export", str(run.path), "--to", "web", "--out", str(out), "--fp32"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "character/onnx/inside.onnx").is_file()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    files = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=out))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        page, errors = open_page(browser, f"http://127.0.0.1:{files.server_address[1]}/")
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        check_inside_view(page, Engine.from_run(run), HUNGRY)
        assert errors == []
        assert any(u.endswith("onnx/inside.onnx") for u in requests)  # loaded on the first click
        assert not any("/v1/" in u or u.endswith("/inside") for u in requests)  # no server
    finally:
        files.shutdown()
        files.server_close()
