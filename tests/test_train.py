"""Training end to end on a tiny dataset: the run folder, exact resume, clean stops, errors."""

from __future__ import annotations

import json
import math
import shutil
import signal

import pytest
import torch
from click.testing import CliRunner
from test_data import write_toy_dataset

import guppyforge.train.loop as train_module
import guppyforge.train.stopping as stopping
from guppyforge.apps.cli import cli
from guppyforge.errors import GuppyError
from guppyforge.model.gpt import GPT, PRESETS
from guppyforge.model.run import load_run
from guppyforge.train.config import TrainOptions
from guppyforge.train.loop import train
from guppyforge.train.optim import lr_scale, make_optimizer, step_progress
from guppyforge.train.run_folder import load_checkpoint

# micro model, 4 rows per step: about 0.1 s a step on two CPU cores.
FAST = dict(preset="micro", batch_size=4, eval_every=8, log_every=2, progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("data"), n_train=300, n_test=30)


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    return train(data_dir, tmp_path_factory.mktemp("runs") / "fish", max_steps=16, **FAST)


def losses(run) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["train_loss"]) for r in map(json.loads, lines)]


def test_schedule_warms_up_then_decays_to_min_lr():
    o = TrainOptions(max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)

    def lr_at(step: int) -> float:
        return o.lr * lr_scale(step, step_progress(step, o), o)

    assert lr_at(0) == pytest.approx(1e-4) and lr_at(9) == pytest.approx(1e-3)
    assert lr_at(10) == pytest.approx(1e-3)
    assert lr_at(55) == pytest.approx(5.5e-4)
    assert lr_at(100) == pytest.approx(1e-4)
    # With a time budget the same curve follows the clock: half the seconds, half the decay.
    assert o.lr * lr_scale(50, 0.5, o) == pytest.approx(5.5e-4)


def test_weight_decay_applies_to_matrices_only():
    model = GPT(PRESETS["micro"])
    (adamw,) = make_optimizer(
        model, TrainOptions(optimizer="adamw"), torch.device("cpu")
    ).optimizers
    decayed, plain = adamw.param_groups
    assert all(p.dim() == 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in plain["params"]) and plain["weight_decay"] == 0.0
    n = sum(p.numel() for group in (decayed, plain) for p in group["params"])
    assert n == model.num_params()


def test_a_finished_run_loads_everywhere(finished_run, data_dir):
    run = load_run(finished_run)
    config = run.config
    assert set(config) >= {"model", "train", "dataset", "persona", "tokenizer", "results"}
    assert config["train"]["max_steps"] == 16 and config["train"]["loss_on"] == "replies"
    assert config["dataset"]["path"] == str(data_dir.resolve())
    assert config["dataset"]["fingerprint"] == "toy-0001" and config["dataset"]["train_rows"] == 300
    assert config["persona"]["name"] == "toyfish" and len(config["persona"]["sha256"]) == 64
    results = config["results"]
    assert results["steps"] == 16 and math.isclose(
        results["perplexity"], math.exp(results["final_eval_loss"]), rel_tol=1e-9
    )
    records = [
        json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert {"step", "train_loss", "lr", "tokens_per_s"} <= set(records[0])
    assert "eval_loss" in records[3] and "perplexity" in records[-1]
    assert records[-1]["train_loss"] < records[0]["train_loss"]  # it learns something
    assert (finished_run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (finished_run / "persona.yaml").read_text() == (data_dir / "persona.yaml").read_text()
    card = (finished_run / "README.md").read_text()
    assert card.startswith('---\nlicense: "mit"\nlibrary_name: guppyforge')
    assert f"guppyforge chat {finished_run}" in card and "![loss curve](loss.png)" in card


def test_the_tokenizer_works_in_transformers(finished_run):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(finished_run)
    messages = [{"role": "user", "content": "are you hungry"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nare you hungry<|im_end|>\n<|im_start|>assistant\n"
    run = load_run(finished_run)
    assert tok(text)["input_ids"] == run.tokenizer.encode(text).ids


def test_resume_from_the_command_line_logs_the_same_losses(data_dir, tmp_path):
    args = ["--preset", "micro", "--batch-size", "4", "--eval-every", "10", "--max-steps", "20"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    cli_run = CliRunner().invoke
    result = cli_run(cli, ["train", str(data_dir), "--out", str(straight), "-q", *args])
    assert result.exit_code == 0, result.output
    result = cli_run(
        cli, ["train", str(data_dir), "--out", str(stopped), "-q", "--stop-after", "7", *args]
    )
    assert result.exit_code == 0, result.output
    assert "stopped at step 7 of 20" in result.output and "--resume" in result.output
    with pytest.raises(GuppyError, match="missing"):
        load_run(stopped)  # a stopped run never looks finished
    result = cli_run(cli, ["train", str(data_dir), "--out", str(stopped), "-q", "--resume"])
    assert result.exit_code == 0, result.output
    assert "resuming at step 7 of 20" in result.output
    assert losses(stopped) == losses(straight)  # exactly: same data, RNG, optimizer state
    a, b = load_run(straight).model.state_dict(), load_run(stopped).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    real_step, calls = train_module.train_step, []

    def step_then_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C mid-step
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job
    run = train(data_dir, tmp_path / "run", max_steps=20, **FAST)
    out = capsys.readouterr().out + capsys.readouterr().err
    assert "stopped at step 3 of 20 (interrupted)" in out
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGINT) == before  # the handler it found is restored


class WorkClock:
    """The training loop's `time`: each reading moves it on by `tick` seconds, so a budgeted
    run's seconds count the loop's work, not how busy the machine's cores are."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now


def test_a_time_budget_fits_the_schedule_to_it_and_ends_fully_decayed(
    data_dir, tmp_path, monkeypatch
):
    clock = WorkClock(0.1)  # the loop's and the schedule fit's: one clock
    monkeypatch.setattr(train_module, "time", clock)
    monkeypatch.setattr(stopping, "time", clock)
    monkeypatch.setattr(train_module, "time_a_step", lambda *args: 0.1)
    options = FAST | {"batch_size": 16, "log_every": 1}  # evals of 4 batches; every step logged
    run = train(
        data_dir, tmp_path / "run", max_minutes=0.2, epochs=1000, lr=1e-3, min_lr=0, **options
    )
    config = load_run(run).config  # finished, not stopped half-way
    schedule = config["train"]["schedule_seconds"]
    assert 0 < schedule <= 12  # the budget less the final eval's and the run files' reserve
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == config["results"]["steps"]
    # The schedule follows the clock: training ended when its seconds were spent, so the cosine
    # ran to its end however many steps fitted; the rate came down from its peak to its floor.
    assert schedule - 0.1 <= records[-1]["seconds"] <= 12  # 0.1 s: rounding
    assert records[-1]["lr"] < 0.05 * 1e-3


def test_a_budget_too_short_for_the_machine_says_so_and_still_decays(
    data_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(train_module, "time_a_step", lambda *args: 1.0)  # a slow machine
    run = train(data_dir, tmp_path / "run", max_minutes=0.2, epochs=1000, lr=1e-3, min_lr=0, **FAST)
    assert "--max-minutes 0.2 is too short for this machine" in capsys.readouterr().out
    config = load_run(run).config
    assert config["train"]["schedule_seconds"] is None  # a schedule by steps instead
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == config["results"]["steps"] == stopping.MIN_BUDGET_STEPS
    assert records[-1]["lr"] < 0.05 * 1e-3


def test_a_budget_on_a_cpu_picks_the_shape_the_curve_says_wins(
    data_dir, tmp_path, monkeypatch, capsys
):
    import guppyforge.model.gpt as presets  # the named shapes live beside the model

    assert presets.preset_for(None, "cpu")[0] == presets.preset_for(5, "cuda")[0] == "guppy-9m"
    for limit, shape in presets.CPU_BUDGET_SHAPES[:-1]:
        assert presets.preset_for(limit, "cpu")[0] == shape
        assert presets.preset_for(limit + 1, "cpu")[0] != shape
    assert presets.preset_for(presets.CPU_BUDGET_SHAPES[-2][0] + 1, "cpu")[0] == "guppy-9m"
    # The run records the shape it picked, and a resume keeps it whatever the table says later.
    monkeypatch.setattr(presets, "CPU_BUDGET_SHAPES", ((math.inf, "micro"),))
    fast = {k: v for k, v in FAST.items() if k != "preset"}
    # Steps timed as fast fit a schedule by the clock to the budget on any machine; the resume
    # keeps that schedule.
    monkeypatch.setattr(train_module, "time_a_step", lambda *args: 0.001)
    run = train(data_dir, tmp_path / "run", max_minutes=0.1, stop_after=4, device="cpu", **fast)
    assert "preset: micro, the shape that trains the best character in 0.1 minutes on a CPU" in (
        capsys.readouterr().out
    )
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train"]["preset"] == "micro"
    monkeypatch.setattr(presets, "CPU_BUDGET_SHAPES", ((math.inf, "tiny"),))
    train(data_dir, run, resume=True, **fast)
    assert "schedule fitted to the first run's budget" in capsys.readouterr().out
    assert load_run(run).config["train"]["preset"] == "micro"


def test_user_errors_are_one_line(data_dir, tmp_path):
    invoke = CliRunner().invoke
    run = tmp_path / "run"
    base = ["train", str(data_dir), "--out", str(run), "-q", "--preset", "micro"]
    result = invoke(cli, [*base, "--resume"])
    assert result.exit_code == 1 and "no checkpoint to resume from" in result.output
    invoke(cli, [*base, "--max-steps", "4", "--stop-after", "2", "--batch-size", "4"])
    result = invoke(cli, [*base, "--max-steps", "4"])
    assert result.exit_code == 1 and "already holds a run" in result.output
    result = invoke(cli, [*base, "--resume", "--max-steps", "9"])
    assert result.exit_code == 1 and "--max-steps 9: the run being resumed used 4" in result.output
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    (other / "stats.json").write_text('{"fingerprint": "another-dataset"}')
    result = invoke(cli, ["train", str(other), "--out", str(run), "-q", "--resume"])
    assert result.exit_code == 1 and "not the dataset this run was trained on" in result.output
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    result = invoke(cli, [*base, "--resume"])
    assert result.exit_code == 1 and "corrupt checkpoint" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = invoke(cli, [*base[:4], "--preset", "huge"])
    assert result.exit_code == 1 and "unknown preset 'huge'" in result.output


def test_too_many_long_conversations_are_refused(tmp_path):
    data = write_toy_dataset(tmp_path / "data", n_train=100, n_test=10, long=5)
    with pytest.raises(GuppyError, match=r"5 train conversations \(5%\) are longer"):
        train(data, tmp_path / "run", max_steps=2, **FAST)


def test_presets_table_shows_the_arithmetic():
    out = CliRunner().invoke(cli, ["presets"]).output
    row = next(line for line in out.splitlines() if line.startswith("guppy-9m "))
    assert row.split()[1:7] == ["6", "384", "6", "768", "128", "4096"]
    assert row.endswith("8.73M") and "6 x 1.18M = 7.10M" in row
    assert "8,726,016" in out and "(4,096 tokens + 128 positions) x 384" in out
