"""`guppyforge why`, `chat --trace` and `/why`, eval's composition, serve's `trace`: a reply
traced back to the persona lines that taught it."""

from __future__ import annotations

import json
import shutil
import threading
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.apps.text import format_choices
from guppyforge.dataset.generate import generate_dataset
from guppyforge.evaluate.trace import load_index, why

PIP = """\
guppyforge: 1
name: pip
display_name: Pip
summary: A fish for trace tests.
style: {case: lower}
grammar:
  food: [worms, flakes, bugs]
topics:
  food:
    ask: ["are you hungry", "do you want {{ food }}", "is it dinner time"]
    say:
      - "{{ food }}? yes. always yes. i eat it by the castle."
      - "no. i ate already. the snail watched me."
  tank:
    ask: ["where do you live", "how is the tank", "do you like your home"]
    say:
      - "my tank is warm and the plant tickles my fins."
      - "the gravel is blue. i count it at night."
probes:
  - {ask: are you hungry, expect_any: [worms]}
"""
WARM = "my tank is warm and the plant tickles my fins."
ATE = "no. i ate already. the snail watched me."


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def make_run(root: Path, seed: int = 1) -> Path:
    """A dataset made by `generate` from PIP, and a run folder that points at it (no weights:
    `why` reads the data and the persona, never the model)."""
    persona, data, run = root / "pip.yaml", root / "data", root / "run"
    persona.write_text(PIP)
    with warnings.catch_warnings():  # PIP is small on purpose: it runs out of distinct rows
        warnings.simplefilter("ignore")
        generate_dataset(persona, data, n=40, seed=seed, test_size=0.2, progress=False, force=True)
    run.mkdir(exist_ok=True)
    shutil.copy(data / "persona.yaml", run / "persona.yaml")
    (run / "config.json").write_text(json.dumps({"dataset": {"path": str(data.resolve())}}))
    return run


@pytest.fixture
def pip_run(tmp_path) -> Path:
    return make_run(tmp_path)


def train_row(run: Path, reply: str) -> dict:
    data = Path(json.loads((run / "config.json").read_text())["dataset"]["path"])
    rows = pq.read_table(next((data / "data").glob("train-*.parquet"))).to_pylist()
    return next(r for r in rows if r["messages"][1]["content"] == reply)


def line(run: Path, n: int) -> str:
    return (run / "persona.yaml").read_text().splitlines()[n - 1]


# --- why ---------------------------------------------------------------------------------------


def test_a_copied_reply_names_the_persona_line_that_holds_its_template(pip_run):
    row = train_row(pip_run, WARM)
    say_line = int(row["template_id"].rsplit("@L", 1)[1])
    result = invoke("why", pip_run, WARM)
    assert result.exit_code == 0, result.output
    assert "verbatim" in result.output
    assert f"{pip_run / 'persona.yaml'}:{say_line}" in result.output
    assert WARM in line(pip_run, say_line)  # the named line is the template that made the reply
    trace = why(pip_run, WARM)
    assert trace.kind == "verbatim" and trace.new == []
    assert trace.sources[0].line == say_line and trace.sources[0].key == "topics.tank.say[0]"


def test_a_reply_stitched_from_two_shows_both_sources_and_their_spans(pip_run):
    stitched = "my tank is warm and the plant tickles my fins. i ate already. the snail watched me."
    trace = why(pip_run, stitched)
    assert trace.kind == "recombined" and trace.new == []
    assert [s.text for s in trace.sources] == [WARM, ATE]
    covers = [[stitched[a:b] for a, b in s.spans] for s in trace.sources]
    assert covers == [["my tank is warm and the plant tickles my fins"],
                      ["i ate already. the snail watched me"]]  # fmt: skip
    for s in trace.sources:  # each source's line holds the template that wrote that span
        assert s.template in line(pip_run, s.line)
    out = invoke("why", pip_run, stitched).output
    assert "recombined" in out
    assert "'my tank is warm and the plant tickles my fins'" in out
    assert "'i ate already. the snail watched me'" in out
    assert f"persona.yaml:{trace.sources[0].line}" in out
    assert f"persona.yaml:{trace.sources[1].line}" in out


def test_words_in_no_training_reply_are_marked_new(pip_run):
    reply = "my tank is warm and the zebra plays jazz."
    trace = why(pip_run, reply)
    assert trace.kind == "novel"
    assert [reply[a:b] for a, b in trace.new] == ["zebra plays jazz"]  # "warm and the": seen
    out = invoke("why", pip_run, reply).output
    assert "new: 'zebra plays jazz'" in out
    # the marks under the reply: 1 under the seen span, * under the made-up one
    assert (
        "\n  " + "1" * len("my tank is warm and the") + " " + "*" * len("zebra plays jazz") + "\n"
        in out
    )


def test_json_output_has_spans_as_text(pip_run):
    result = invoke("why", pip_run, WARM, "--json")
    data = json.loads(result.stdout)  # the "indexing..." note goes to stderr
    assert data["kind"] == "verbatim" and data["sources"][0]["covers"] == [WARM]


def test_the_index_is_cached_rebuilt_when_the_data_changes_and_survives_the_data_moving(tmp_path):
    run = make_run(tmp_path)
    notes = []
    why(run, WARM, note=notes.append)
    assert len(notes) == 1 and (run / "trace" / "meta.json").is_file()
    why(run, WARM, note=notes.append)
    assert len(notes) == 1  # read from RUN/trace, not built again
    key = json.loads((run / "trace" / "meta.json").read_text())["key"]
    make_run(tmp_path, seed=2)  # the same folder, regenerated: another fingerprint
    why(run, WARM, note=notes.append)
    assert len(notes) == 2
    assert json.loads((run / "trace" / "meta.json").read_text())["key"] != key
    shutil.rmtree(tmp_path / "data")
    assert why(run, WARM, note=notes.append).kind == "verbatim" and len(notes) == 2


def test_a_run_without_its_dataset_or_cache_is_one_line(pip_run):
    shutil.rmtree(Path(json.loads((pip_run / "config.json").read_text())["dataset"]["path"]))
    result = invoke("why", pip_run, WARM)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "--data" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- the lesson on sampling (/why) --------------------------------------------------------------


def test_choices_name_the_persona_line_each_candidate_continues(pip_run):
    index = load_index(pip_run)
    pieces = ["my", " tank", " is", " warm", " gravel", " zebra"]

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    sure = [(0, 0.95, 0.95)]
    record = [(0, sure), (1, [(1, 0.5, 0.6), (4, 0.3, 0.3), (5, 0.2, 0.1)]), (2, sure), (3, sure)]
    text = format_choices(index, decode, record)
    warm = next(s for s in (index.source(i, []) for i in range(len(index.texts))) if s.text == WARM)
    lines = text.splitlines()
    assert "after 'my':" in text
    picked = next(x for x in lines if "' tank'" in x)
    assert "<- picked" in picked and f"persona.yaml:{warm.line}" in picked
    assert "no training reply goes on this way" in next(x for x in lines if "' zebra'" in x)
    assert "' gravel'" in text and "0.95" not in text  # only the hesitant token is shown


# --- chat, eval, serve on a trained micro model ------------------------------------------------


@pytest.fixture
def micro_copy(micro_run, tmp_path) -> Path:
    """A copy of the micro run: tracing caches its index in the run folder."""
    return Path(shutil.copytree(micro_run, tmp_path / "run"))


def test_repl_why_traces_the_last_reply_and_its_choices(micro_copy):
    result = CliRunner().invoke(
        cli, ["chat", str(micro_copy), "--temperature", "0"], input="/why\nare you hungry\n/why\n"
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "(no reply yet: /why explains the last reply)" in out
    after = out.split("you> ")[3]  # what /why printed after the reply
    assert any(k in after for k in ("verbatim:", "recombined:", "novel:"))
    assert "persona.yaml" in after or "new:" in after
    assert "how it picked the words" in after


def test_chat_trace_follows_a_one_shot_reply_with_its_trace(micro_copy):
    result = invoke(
        "chat", micro_copy, "--prompt", "are you hungry", "--temperature", "0", "--trace"
    )
    assert result.exit_code == 0, result.output
    reply, rest = result.output.split("\n", 1)
    assert reply.strip() and any(k in rest for k in ("verbatim:", "recombined:", "novel:"))


def test_eval_reports_composition_per_topic(micro_copy, tmp_path):
    out = tmp_path / "eval.json"
    result = invoke("eval", micro_copy, "--samples", "1", "--topic-samples", "3", "--json", out)
    assert result.exit_code == 0, result.output
    food = json.loads(out.read_text())["composition"]["food"]
    assert food["replies"] == 3
    assert sum(food[k] for k in ("verbatim", "recombined", "novel")) == pytest.approx(1.0)
    assert "verbatim" in result.output and "recombined" in result.output


def test_serve_adds_a_trace_only_when_asked(micro_copy):
    import http.client

    from guppyforge.apps.serve import make_server
    from guppyforge.model.run import load_run

    server = make_server(load_run(micro_copy), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def post(body: dict):
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body))
        response = conn.getresponse()
        status, text = response.status, response.read().decode()
        conn.close()
        return status, text

    ask = {"messages": [{"role": "user", "content": "are you hungry"}], "temperature": 0}
    try:
        status, plain = post(ask)
        assert status == 200 and "trace" not in json.loads(plain)
        status, traced = post(ask | {"trace": True})
        body = json.loads(traced)
        reply = body["choices"][0]["message"]["content"]
        assert body["trace"]["reply"] == reply.strip()
        assert body["trace"]["kind"] in ("verbatim", "recombined", "novel")
        status, streamed = post(ask | {"trace": True, "stream": True})
        chunks = [json.loads(x[6:]) for x in streamed.split("\n\n") if x.startswith("data: {")]
        assert chunks[-1]["trace"] == body["trace"]  # the last chunk carries it
        assert post(ask | {"trace": "yes"})[0] == 400
    finally:
        server.shutdown()
        server.server_close()
