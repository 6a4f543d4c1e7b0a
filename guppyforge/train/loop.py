"""Training: the update rule, when a run stops, and the loop that ties them to the model.

Read in this order: the optimizers (Muon for the matrices, AdamW for the rest) and the
learning-rate schedule, with `train_step`, the one step; stopping (Ctrl-C, a time budget, and
timing a step to fit the schedule to it); then `train()`, a dataset folder in, a run folder out
(run_folder.py says what is in it). Under torchrun the same loop runs in every process;
distributed.py holds what they share and agree on.
"""

from __future__ import annotations

import contextlib
import gc
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow
import torch
from tqdm import tqdm

from guppyforge.dataset.folder import load_splits
from guppyforge.errors import GuppyError
from guppyforge.files import FolderLock
from guppyforge.model.engine import Engine
from guppyforge.model.gpt import GPT, get_preset, preset_for
from guppyforge.model.packing import (
    epoch_batches,
    eval_loss,
    padding_share,
    tokenize,
)
from guppyforge.model.run import pick_device, read_tokenizer
from guppyforge.model.tokenizer import chat_texts, save_tokenizer, train_tokenizer
from guppyforge.train.config import EVAL_ROWS, SAMPLE_TOKENS, fill_schedule
from guppyforge.train.distributed import Group, join, shares
from guppyforge.train.optim import lr_scale, make_optimizer, step_progress, train_step
from guppyforge.train.precision import pick_precision
from guppyforge.train.run_folder import (
    claim_run,
    dataset_info,
    finish_run,
    load_persona_info,
    read_metrics,
    resume_options,
    sample_prompts,
    save_checkpoint,
    set_rng_state,
    start_options,
)
from guppyforge.train.stopping import Stop, fit_schedule, stop_on_ctrl_c, time_a_step

# --- The training loop: a dataset folder in, a run folder out (see run_folder.py for its layout).
#
# tokenizer -> packed batches -> optimizer steps (optim.py: Muon + AdamW by default) on a
#     warm-up + cosine schedule -> eval, samples -> checkpoints/last.pt along the way
#     -> model.safetensors, loss.png, README.md, config.json
#
# Every option and its default lives in config.py; `train` reads top to bottom: set-up, data and
# model, the schedule, the loop state, the loop (one step marked "one step"), the end.
#
# `--max-steps` fixes the whole learning-rate schedule up front, so a run can stop (Ctrl-C,
# `--max-minutes`, `--stop-after`) and `--resume` later to exactly the same result.


def prepare_data(
    data_dir: Path, run: Path, cfg, resumed: bool, persona, data_format=None, group=None
):
    """Tokenizer, tokenized samples, dataset facts and the prompts to show at each eval.

    Conversations too long for the context are dropped (and counted). The tokenizer is trained
    on the train split once and saved in the run folder, where a resumed run (and chat, eval,
    export) finds it; process 0 does that and hands it to the others.
    """
    group = group or Group()
    say = tqdm.write if group.main else quiet
    splits = load_splits(data_dir, data_format, cfg.context, say=say)

    def tokenizer(train=splits["train"]):
        run.mkdir(parents=True, exist_ok=True)
        if resumed:
            return read_tokenizer(run)  # cut short by a kill or a full disk: one line naming it
        tok = train_tokenizer(chat_texts(train), cfg.vocab_size)
        save_tokenizer(tok, run, cfg.context)
        return tok

    tok = group.from_main(tokenizer)
    info = dataset_info(data_dir, splits) | getattr(splits, "source", {})  # shape, fingerprint
    train_s = tokenize(splits["train"], tok, cfg.context)
    test_s = tokenize(splits["test"], tok, cfg.context)
    info["too_long"] = train_s.too_long + test_s.too_long
    info["truncated"] = train_s.truncated + test_s.truncated
    dropped = train_s.too_long / max(1, len(train_s) + train_s.too_long)
    if dropped > 0.01:  # a few odd ones can go; more means the wrong preset for this data
        raise GuppyError(
            f"{data_dir}: {train_s.too_long} train conversations ({dropped:.0%}) are longer than "
            f"the {cfg.context}-token context. Use --preset guppy-9m-long, or fewer --turns."
        )
    prompts = sample_prompts(persona, splits["test"])
    # The conversations are tokens now: let the tables go, and have Arrow's allocator (which
    # keeps freed memory for reuse) hand it back, so training's peak memory stays lower.
    del splits
    gc.collect()
    pyarrow.default_memory_pool().release_unused()
    return tok, train_s, test_s, info, prompts


def quiet(*args, **kwargs) -> None:
    """What processes other than 0 print: nothing (process 0 speaks for the run)."""


@dataclass
class LoopState:
    """Where the loop is: everything a checkpoint holds besides weights and optimizer state,
    so a resume restores exactly this, in one place."""

    step: int = 0
    position: tuple[int, int] = (0, 0)  # the data stream's (epoch, batch) to read next
    loss_sum: float = 0.0  # the losses since the last log line (a tensor between logs), so
    loss_n: int = 0  # it averages the same steps whether or not the run stopped in between
    clock: float = 0.0  # seconds of schedule spent before this process started (time budgets)

    def saved(self, t0: float) -> dict:
        """What a checkpoint holds of the state; `t0`: when this process's clock started."""
        clock = self.clock + time.monotonic() - t0
        return {"step": self.step, "position": list(self.position), "loss_n": self.loss_n,
                "loss_sum": float(self.loss_sum), "clock": clock}  # fmt: skip

    @classmethod
    def restored(cls, ckpt: dict | None) -> LoopState:
        if not ckpt:
            return cls()
        return cls(
            ckpt["step"],
            tuple(ckpt["position"]),
            ckpt["loss_sum"],
            ckpt["loss_n"],
            ckpt.get("clock", 0.0),
        )


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    preset: str | None = None,
    force: bool = False,
    raise_on_interrupt: bool = False,
    data_format: str | None = None,
    **options,
) -> Path:
    """Train a character model on the dataset in `data_dir`; write a run folder to `out_dir`.

    `force` replaces an earlier run in `out_dir` (its files only, see guppyforge.files).
    Ctrl-C stops after the current step with a checkpoint and returns; with
    `raise_on_interrupt` it then raises KeyboardInterrupt (the CLI does: exit status 130).
    """
    started = time.monotonic()
    # --- Set-up: the options checked, the device and processes, the run folder claimed ------
    o = start_options(preset, options)
    device = pick_device(o.device)  # a device that is not there fails now (--device mps on Linux)
    group = join(device)  # alone, or this process's place among torchrun's (distributed.py)
    device = group.device
    data_dir, run = Path(data_dir).resolve(), Path(out_dir)
    lock = FolderLock(run)  # one writer per run folder: process 0 takes it as it claims the folder
    try:
        ckpt = group.from_main(lambda: claim_run(run, data_dir, o, force, lock=lock))
        o = resume_options(o, ckpt, group.world, run)
        precision = pick_precision(device, o.precision)
        o.precision = precision.name  # recorded resolved, so a resume computes the same numbers
        say = tqdm.write if group.main else quiet
        picked = None  # said once the data has loaded: a bad data file's line comes alone
        if o.preset is None:  # not given (a resumed run has its checkpoint's): fit to the budget
            o.preset, why = preset_for(o.max_minutes, device.type)
            picked = f"preset: {o.preset}, {why} (--preset to choose)"
        cfg = get_preset(o.preset)
        torch.manual_seed(o.seed)
        random.seed(o.seed)

        # --- Data and model ----------------------------------------------------------------
        persona = load_persona_info(data_dir)
        tok, train_s, test_s, info, prompts = prepare_data(
            data_dir, run, cfg, bool(ckpt), persona, data_format, group
        )
        if picked:
            say(picked)
        if ckpt and ckpt["dataset"]["fingerprint"] != info["fingerprint"]:
            raise GuppyError(f"{data_dir}: not the dataset this run was trained on. Pass that one.")
        # Under torchrun a step is all processes' rows: the plan of one process with that many.
        plan0 = epoch_batches(train_s, cfg.context, o.batch_size * group.world, o.seed, 0)
        model = GPT(cfg).to(device)
        stepper = group.wrap(model)  # DDP under torchrun: its backward averages the gradients
        optimizer = make_optimizer(model, o, device)
        scaler = precision.scaler()

        # --- The schedule: its length in steps, or fitted to the clock of a time budget -------
        deadline = started + 60 * o.max_minutes if o.max_minutes else None
        deadline = fit_schedule(
            o, len(plan0), cfg.context, deadline, len(test_s), group, say,
            lambda: time_a_step(model, o, train_s, cfg.context, device, precision, stepper),
        )  # fmt: skip
        fill_schedule(o)

        # --- Loop state: in one place, restored from the checkpoint on resume ---------------
        state = LoopState.restored(ckpt)
        if ckpt:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
        metrics_path, ckpt_path = run / "metrics.jsonl", run / "checkpoints" / "last.pt"
        records = [r for r in read_metrics(metrics_path) if r["step"] <= state.step] if ckpt else []
        if group.main:
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
        pad = padding_share(train_s, plan0, cfg.context)
        describe(say, o, cfg, model, group, optimizer, precision, device, train_s, test_s, info,
                 len(plan0), pad, state.step)  # fmt: skip
        engine = Engine(model, tok, prepare=False)  # the samples come from the model as it trains
        name = persona.name if persona else "bot"

        def save() -> None:
            if group.main:  # every process holds the same weights and state
                weights = {"model": model, "optimizer": optimizer, "scaler": scaler}
                save_checkpoint(ckpt_path, **{k: v.state_dict() for k, v in weights.items()},
                                **state.saved(t0), train=asdict(o), dataset=info,
                                processes=group.world)  # fmt: skip

        def where() -> tuple[float, bool]:
            """(the share of the schedule done, for the learning rate; whether it is over):
            by the clock for a time budget (the processes' clocks averaged: one all-reduce),
            else by steps. Asked once a step."""
            if o.schedule_seconds:
                done = group.mean(state.clock + time.monotonic() - t0) / o.schedule_seconds
                return done, done >= 1
            return step_progress(state.step, o), state.step >= o.max_steps

        stepper = torch.compile(stepper) if o.compile else stepper
        stream = shares(
            train_s, cfg.context, o.batch_size, o.seed, o.loss_on, group, start=state.position
        )
        bar = tqdm(
            total=o.max_steps,
            initial=state.step,
            unit="step",
            disable=not (o.progress and group.main),
        )
        stop, eval_seconds = Stop(), 0.0  # evals are kept out of tokens/s: it measures training
        # Why a run stops early, in the order one outranks another when processes see different ones.
        out_of_time = f"--max-minutes {o.max_minutes or 0:g} ran out"
        reasons = [None, out_of_time, f"--stop-after {o.stop_after}", "interrupted"]
        t0, tokens, last_log = time.monotonic(), 0, (time.monotonic(), 0)
        done, over = where()
        model.train()
        metrics_file = metrics_path.open("a") if group.main else contextlib.nullcontext()
        with stop_on_ctrl_c(stop), metrics_file as metrics:
            while not over:
                if o.stop_after is not None and state.step >= o.stop_after:
                    stop.reason = reasons[2]
                elif deadline and time.monotonic() > deadline and not o.schedule_seconds:
                    stop.reason = out_of_time
                if group.together:  # a Ctrl-C or a clock in any process stops all at this step
                    stop.reason = reasons[int(group.max(reasons.index(stop.reason)))]
                if stop.reason:
                    break
                # --- one step: the next batch, its learning rate, forward, backward, update ---
                share = next(stream)  # this process's rows of the batch (all of them when alone)
                scale = lr_scale(state.step, done, o)
                batch = share.batch.to(device)
                loss = train_step(stepper, batch, optimizer, scaler, precision, scale, o.grad_clip,
                                  share.weight)  # fmt: skip
                state.step, state.position = state.step + 1, share.position
                state.loss_sum, state.loss_n = state.loss_sum + loss, state.loss_n + 1
                tokens += share.tokens  # `loss` is a tensor: nothing waits for the GPU
                # --- the step is done; the rest is logging, evals and checkpoints ------------
                bar.update()
                done, over = where()
                if state.step % o.log_every and state.step % o.eval_every and not over:
                    continue
                train_loss = group.mean(float(state.loss_sum)) / state.loss_n  # the whole batch's
                if group.main:
                    now = time.monotonic()
                    speed = (tokens - last_log[1]) / max(now - last_log[0], 1e-9)
                    record = {"step": state.step, "train_loss": train_loss}
                    record.update(lr=o.lr * scale, tokens_per_s=round(speed))
                    record["seconds"] = round(state.clock + now - t0, 1)
                    bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{speed:,.0f}")
                    if o.schedule_seconds and done > 0:  # the clock decides: an honest total
                        bar.total = max(state.step, round(state.step / min(done, 1.0)))
                    if state.step % o.eval_every == 0 and not over:  # the final eval follows
                        t = time.monotonic()
                        evals = (model, test_s, cfg, device, o, precision, say, state.step)
                        record.update(evaluate(*evals, EVAL_ROWS))
                        show_samples(engine, prompts, o.seed, name, say)
                        eval_seconds += time.monotonic() - t
                        save()  # so a crash loses at most one eval interval
                    records.append(record)
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                state.loss_sum, state.loss_n, last_log = 0.0, 0, (time.monotonic(), tokens)
        bar.close()
        save()
        group.leave()  # what follows (the final eval, the run files) is process 0's alone
        if stop.reason:
            say(f"stopped at step {state.step} of {o.max_steps} ({stop.reason}); checkpoint saved.")
            more = f" --nproc {group.world}" if group.together else ""
            say(f"continue with: guppyforge train {data_dir} --out {run} --resume{more}")
            if stop.reason == "interrupted" and raise_on_interrupt and group.main:
                raise KeyboardInterrupt  # the caller (the CLI: exit 130) must not see a success
            return run
        if not group.main:
            return run

        # --- The end: the final eval on the whole test split, then the run files -----------
        speed = tokens / max(time.monotonic() - t0 - eval_seconds, 1e-9)
        final = evaluate(model, test_s, cfg, device, o, precision, say, state.step, None)
        show_samples(engine, prompts, o.seed, name, say)
        if records:
            records[-1].update(final)
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
        minutes = (time.monotonic() - started) / 60
        results = {"final_eval_loss": final["eval_loss"], "perplexity": final["perplexity"]}
        results.update(steps=state.step, minutes=round(minutes, 2), tokens_per_s=round(speed))
        train_info = asdict(o) | {"device": str(device), "processes": group.world}
        del train_info["progress"], train_info["resume"]
        train_info |= {"steps_per_epoch": len(plan0), "padding": round(pad, 4)}
        finish_run(run, model, train_info, info, persona, tok.get_vocab_size(), records, results)
        say(
            f"done: eval loss {final['eval_loss']:.3f} in {minutes:.1f} min. Chat: guppyforge chat {run}"
        )
        return run
    finally:
        lock.release()


def evaluate(model, test_s, cfg, device, o, precision, say, step, max_rows) -> dict:
    """The eval loss on `max_rows` test rows (None: all of them), said and returned."""
    loss, ppl = eval_loss(
        model, test_s, cfg.context, device, o.loss_on, o.batch_size, max_rows, precision.autocast
    )
    say(f"step {step}: eval loss {loss:.3f}, perplexity {ppl:.2f}")
    return {"eval_loss": loss, "perplexity": ppl}


def show_samples(engine, prompts: list[list[dict]], seed: int, name: str, say) -> None:
    """Watch the character appear: the prompts' replies decoded together, each with its own
    seeded generator inside the engine, so training's RNG is left alone."""
    engine.model.eval()
    replies = engine.replies(
        prompts, [seed + i for i in range(len(prompts))], max_new_tokens=SAMPLE_TOKENS
    )
    for chat, reply in zip(prompts, replies, strict=True):
        for m in chat:
            say(f"  {'you' if m['role'] == 'user' else m['role']}: {m['content']}")
        say(f"  {name}: {reply.strip()}")
    engine.model.train()


def describe(say, o, cfg, model, group, optimizer, precision, device, train_s, test_s, info,
             steps_per_epoch: int, pad: float, step: int) -> None:  # fmt: skip
    """The lines the trainer prints before the first step: what it trains, on what, how."""
    if group.together:
        say(f"{group.world} processes (DDP over {group.backend}), each {o.batch_size} of the rows")
    say(f"{cfg.n_layer} layers, d_model {cfg.d_model}: {model.num_params() / 1e6:.2f}M parameters")
    say(f"{len(train_s)} train / {len(test_s)} test conversations, loss on {o.loss_on}")
    if info["truncated"] or info["too_long"]:
        say(
            f"past the {cfg.context}-token context: {info['truncated']} conversations cut after "
            f"their last whole turn that fits, {info['too_long']} dropped (first turn too long)"
        )
    else:
        say(f"every conversation fits the {cfg.context}-token context")
    rows = o.batch_size * group.world
    say(f"{steps_per_epoch} steps per epoch of {rows} rows of up to {cfg.context} tokens")
    say(f"packed: {pad:.1%} of the positions computed are padding")
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    say(f"device: {device}{threads}; {precision.describe()}")
    say(f"optimizer: {optimizer.describe()}; {rows} rows per step")
    if o.schedule_seconds:  # a resume keeps the schedule, not the --max-minutes that fitted it
        budget = f"--max-minutes {o.max_minutes:g}" if o.max_minutes else "the first run's budget"
        say(f"schedule fitted to {budget}: {o.schedule_seconds:.0f} s, about {o.max_steps} steps")
    say(f"{'resuming at' if step else 'training for'} step {step} of {o.max_steps}")
