"""The chat page at `/`, driven in headless Chromium: persona, streamed reply, settings, new chat.

The page is the web export's too (guppyforge/apps/page, test_web.py): here with its server.js
backend, which page.json names.

Needs Debian's Chromium (`apt-get install -y chromium`) and the `playwright` package, which
drives it without downloading a browser of its own.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from conftest import cat_run, serving
from playwright import sync_api

from guppyforge.model.engine import Engine

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)"
)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def run(micro_run, tmp_path_factory):
    return cat_run(micro_run, tmp_path_factory.mktemp("cat") / "run")


@pytest.fixture(scope="module")
def server(run):
    with serving(run) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(server.url.removesuffix("v1"))
        # page.json read and the backend started: the name, the greeting and the form are there.
        page.wait_for_function("document.getElementById('status').dataset.state !== 'loading'")
        assert page.get_attribute("#status", "data-state") == "ready", page.inner_text("#status")
        yield page
        browser.close()


def test_the_page_shows_the_persona_and_streams_a_reply(page, server, run):
    assert page.locator("#name").inner_text() == "Marmalade"
    assert page.locator("#summary").inner_text().startswith("A ")
    greeting = page.locator(".msg.assistant").first.inner_text()
    # One of the greetings the persona file itself writes (read as plain YAML, not through the
    # code that feeds the page): its `greeting` topic's replies, each symbol matching any text.
    says = yaml.safe_load(run.persona_path.read_text())["topics"]["greeting"]["say"]
    shapes = [".*".join(map(re.escape, re.split(r"\{\{.*?\}\}", say))) for say in says]
    assert greeting.strip(), "the cat persona has a greeting, so the page must show one"
    assert any(re.fullmatch(shape, greeting, re.I | re.S) for shape in shapes), greeting
    page.locator("#temperature").fill("0")
    page.locator("#top-k").fill("7")
    with page.expect_request("**/v1/chat/completions") as request:
        page.locator("#prompt").fill("are you hungry")
        page.locator("#send").click()
    sent = json.loads(request.value.post_data)
    assert sent["stream"] is True and sent["temperature"] == 0 and sent["top_k"] == 7
    assert sent["model"] == server.model_id
    assert sent["messages"] == [{"role": "user", "content": "are you hungry"}]
    reply = page.locator(".msg.assistant[data-done]")
    reply.wait_for(timeout=20_000)
    expected = Engine.from_run(run).reply(
        [{"role": "user", "content": "are you hungry"}], temperature=0
    )
    assert reply.inner_text() == expected.strip()

    page.locator("#new-chat").click()
    texts = page.locator(".msg").all_inner_texts()
    assert texts == [greeting]  # a new chat: only the greeting again
