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
import math
import random
import signal
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
    Samples,
    batches,
    epoch_batches,
    eval_loss,
    padding_share,
    tokenize,
)
from guppyforge.model.tokenizer import chat_texts, save_tokenizer, train_tokenizer
from guppyforge.train.config import TrainOptions, peak_lr
from guppyforge.train.distributed import Group, join, shares
from guppyforge.train.precision import Precision, cpu_has_native_bf16, pick_precision
from guppyforge.train.run_folder import (
    claim_run,
    dataset_info,
    finish_run,
    load_persona_info,
    pick_device,
    read_metrics,
    read_tokenizer,
    resume_options,
    sample_prompts,
    save_checkpoint,
    set_rng_state,
    start_options,
)

# --- The update rule: which optimizer moves which weights, and the learning-rate schedule.
#
# Two optimizers are on offer (`--optimizer`):
# - `adamw`: AdamW for every weight, decay on matrices only: the classic recipe.
# - `muon`: Muon for the blocks' weight matrices, AdamW for the rest (embeddings, biases,
#   LayerNorms). Muon orthogonalises each matrix's momentum (a few Newton-Schulz iterations), so
#   every direction of the matrix moves at a similar rate, instead of the few largest ones
#   dominating: more learning per step, which is what a short CPU budget needs. Embeddings and
#   vectors are not matrices in that sense (a row per token, a gain per channel), so AdamW keeps
#   them.
#
# The schedule is a linear warm-up, then a cosine decay from the peak down to `--min-lr` (as a
# share of AdamW's peak, the same share for Muon's rate). Its clock
# is the step count when `--max-steps` (or `--epochs`) fixes the length, and the wall clock when
# `--max-minutes` does, so a budgeted run always ends fully decayed however fast the machine is.


class Optimizers:
    """One or two torch optimizers that step together, with one learning-rate scale."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    def describe(self) -> str:
        """What moves which weights, for the line the trainer prints at start."""
        names = {
            torch.optim.Muon: "muon (bf16 Newton-Schulz)",
            Fp32Muon: "muon (fp32 Newton-Schulz)",
            torch.optim.AdamW: "adamw",
        }
        kinds = [names.get(type(opt), type(opt).__name__) for opt in self.optimizers]
        if len(kinds) == 1:
            return kinds[0]
        return f"{kinds[0]} for the blocks' matrices, {kinds[1]} for the rest"

    def set_scale(self, scale: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * scale

    def step(self, scaler: torch.amp.GradScaler) -> None:
        for opt in self.optimizers:
            scaler.step(opt)  # skipped when fp16 gradients overflowed

    def unscale(self, scaler: torch.amp.GradScaler) -> None:
        for opt in self.optimizers:
            scaler.unscale_(opt)

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict] | dict) -> None:
        states = [states] if isinstance(states, dict) else states
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)


def make_optimizer(model: GPT, o: TrainOptions, device: torch.device) -> Optimizers:
    """The optimizers `o.optimizer` names, each group carrying its `peak_lr`."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # Decay pulls weights toward zero, a brake on memorising. On matrices (and embeddings) that
    # helps; on biases and LayerNorm gains it only fights the scale the model needs.
    matrices = [p for n, p in params.items() if p.dim() == 2 and n.startswith("h.")]
    tables = [p for n, p in params.items() if p.dim() == 2 and not n.startswith("h.")]
    vectors = [p for p in params.values() if p.dim() < 2]
    # Fused: one kernel updates every tensor, instead of a dozen small ops per tensor.
    fused = device.type in ("cuda", "cpu")
    adam_groups = [
        {"params": tables, "weight_decay": o.weight_decay, "peak_lr": peak_lr(o)},
        {"params": vectors, "weight_decay": 0.0, "peak_lr": peak_lr(o)},
    ]
    if o.optimizer == "adamw":
        adam_groups[0]["params"] = matrices + tables
        return Optimizers(
            [torch.optim.AdamW(adam_groups, lr=peak_lr(o), betas=(0.9, 0.95), fused=fused)]
        )
    # "match_rms_adamw" scales Muon's orthogonal update to AdamW's typical size, so its learning
    # rate means what AdamW's does; muon_lr can then sit near lr (measured in bench_train.py).
    # fp32 asked for on a CPU is fp32 throughout: the numbers and speed of a CPU without bf16.
    fp32_ns = device.type == "cpu" and (o.precision == "fp32" or not cpu_has_native_bf16())
    muon = (Fp32Muon if fp32_ns else torch.optim.Muon)(
        [{"params": matrices, "peak_lr": o.muon_lr}],
        lr=o.muon_lr,
        weight_decay=o.weight_decay,
        adjust_lr_fn="match_rms_adamw",
    )
    adam = torch.optim.AdamW(adam_groups, lr=peak_lr(o), betas=(0.9, 0.95), fused=fused)
    return Optimizers([muon, adam])


class Fp32Muon(torch.optim.Muon):
    """torch's Muon with its Newton-Schulz iterations in fp32 instead of bf16.

    torch runs the orthogonalisation in bf16, which is fast on a GPU and on CPUs with native
    bf16, but emulated (about 5x slower per training step, measured) on a CPU without it. The
    update is otherwise torch's: momentum, Nesterov, the five quintic iterations, the learning
    rate matched to AdamW's scale, decoupled weight decay. The state ("momentum_buffer") is
    torch's too, so a checkpoint resumes with either class.
    """

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            a, b, c = group["ns_coefficients"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                x = g.T if g.shape[0] > g.shape[1] else g  # the Gram matrix of the short side
                x = x / x.norm().clamp(min=group["eps"])  # singular values <= 1
                for _ in range(group["ns_steps"]):
                    gram = x @ x.T
                    x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
                update = x.T if g.shape[0] > g.shape[1] else x
                scale = 0.2 * math.sqrt(max(p.shape))  # "match_rms_adamw"
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


def lr_scale(step: int, progress: float, o) -> float:
    """The learning rate as a share of its peak: warm-up over steps, then cosine on `progress`.

    `progress` is the share of the schedule done (steps or seconds, see the module docstring).
    """
    # Warm-up: Adam's moment estimates are noise for the first steps; full-size updates on
    # them can knock a fresh model into a bad region it never leaves.
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    floor = o.min_lr / peak_lr(o)
    return floor + 0.5 * (1 - floor) * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def step_progress(step: int, o) -> float:
    """Progress of a schedule measured in steps (warm-up excluded)."""
    return (step - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps)


def train_step(
    model, batch, optimizers: Optimizers, scaler, precision: Precision, scale, clip, weight=1.0
):
    """One optimizer step on one batch; returns the loss (a tensor, so CUDA need not wait).

    `weight`: this process's share of the batch's counted tokens times the number of processes
    (1 alone; see distributed.py), so DDP's average of the gradients is the whole batch's. The
    loss returned is weighed too: its mean over the processes is the batch's loss.
    """
    optimizers.set_scale(scale)
    with precision.autocast():
        loss = model(batch.idx, batch.targets, batch.positions, batch.attn_mask) * weight
    # Under DDP, backward all-reduces the gradients (its hooks, bucket by bucket) and returns
    # once every process holds the average: clipping and Muon below see the whole batch's.
    scaler.scale(loss).backward()  # the scaler is a no-op unless precision is fp16
    optimizers.unscale(scaler)  # clip the true gradients, not the scaled ones
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizers.step(scaler)
    scaler.update()
    optimizers.zero_grad()
    return loss.detach()


# --- When a run stops early: Ctrl-C, a time budget, and timing a step to fit the schedule to it.
#
# Stopping is always clean: the loop finishes the step it is in, writes a checkpoint, and prints
# how to resume. A step cut in half would leave weights and optimizer state out of step.


@dataclass
class Stop:
    """Why the run stops before its schedule ends; None while it goes on."""

    reason: str | None = None


@contextlib.contextmanager
def stop_on_ctrl_c(stop: Stop):
    """Ctrl-C asks for a clean stop after the current step; a second Ctrl-C aborts at once."""

    def handler(signum, frame):
        stop.reason = "interrupted"
        signal.signal(signal.SIGINT, previous)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def time_a_step(model, o, samples: Samples, context, device, precision, stepper=None) -> float:
    """Seconds one training step takes on this machine, timed on a few real ones.

    The steps run at learning rate 0 with their own optimizer, so they change nothing: AdamW's
    and Muon's weight decay are scaled by the learning rate too. `stepper` is the model as
    trained (DDP's wrapper, whose all-reduce is part of a step), `model` what it wraps.
    """
    probe = batches(samples, context, o.batch_size, o.seed, o.loss_on)
    optimizer, scaler = make_optimizer(model, o, device), precision.scaler()
    stepper = stepper or model
    times = []
    for _ in range(4):
        t = time.perf_counter()
        batch = next(probe)[0].to(device)
        float(train_step(stepper, batch, optimizer, scaler, precision, 0.0, 1.0))
        times.append(time.perf_counter() - t)
    return min(times[1:])  # the first step pays one-off costs


# --- The training loop: a dataset folder in, a run folder out (see run_folder.py for its layout).
#
# tokenizer -> packed batches -> optimizer steps (Muon + AdamW by default, above) on a
#     warm-up + cosine schedule -> eval, samples -> checkpoints/last.pt along the way
#     -> model.safetensors, loss.png, README.md, config.json
#
# Every option and its default lives in config.py; one step is marked "one step" in `train`.
#
# `--max-steps` fixes the whole learning-rate schedule up front, so a run can stop (Ctrl-C,
# `--max-minutes`, `--stop-after`) and `--resume` later to exactly the same result.

# The fewest steps a time budget trains: fewer cannot warm up and then decay.
MIN_BUDGET_STEPS = 20
EVAL_ROWS = 64  # rows evaluated at each interval (about 8K tokens); the final eval uses all
EVALS_PER_RUN = 10  # evals along the way when --eval-every is not given
WARMUP_SHARE, WARMUP_MAX = 20, 100  # default warm-up: 1/20 of the steps, at most 100
# Fitting the schedule to --max-minutes, from the time of one measured step:
TEST_TOKENS_PER_CONVERSATION = 40  # what the final eval's batches hold, per test conversation
FORWARD_SHARE = 3  # an eval batch runs the forward pass only: about a third of a step
RUN_FILES_SECONDS = 5  # writing the run files at the end (weights, plot, card)


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
    share = train_s.too_long / max(1, len(train_s) + train_s.too_long)
    if share > 0.01:  # a few odd ones can go; more means the wrong preset for this data
        raise GuppyError(
            f"{data_dir}: {train_s.too_long} train conversations ({share:.0%}) are longer than "
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
    # One writer per run folder: process 0 takes the lock when it claims the folder.
    with FolderLock(out_dir) as lock:
        return _train(data_dir, out_dir, preset, force, raise_on_interrupt, data_format, lock,
                      **options)  # fmt: skip


def _train(data_dir, out_dir, preset, force, raise_on_interrupt, data_format, lock, **options):
    started = time.monotonic()
    o = start_options(preset, options)
    device = pick_device(o.device)  # a device that is not there fails now (--device mps on Linux)
    group = join(device)  # alone, or this process's place among torchrun's (distributed.py)
    device = group.device
    data_dir, run = Path(data_dir).resolve(), Path(out_dir)
    ckpt_path = run / "checkpoints" / "last.pt"
    ckpt = group.from_main(lambda: claim_run(run, data_dir, o, force, lock=lock))
    o = resume_options(o, ckpt, group.world, run)
    precision = pick_precision(device, o.precision)
    o.precision = precision.name  # recorded resolved, so a resume computes the same numbers
    say = tqdm.write if group.main else quiet
    if o.preset is None:  # not given (a resumed run has its checkpoint's): fit to the budget
        o.preset, why = preset_for(o.max_minutes, device.type)
        say(f"preset: {o.preset}, {why} (--preset to choose)")
    cfg = get_preset(o.preset)
    torch.manual_seed(o.seed)
    random.seed(o.seed)

    persona = load_persona_info(data_dir)
    tok, train_s, test_s, info, prompts = prepare_data(
        data_dir, run, cfg, bool(ckpt), persona, data_format, group
    )
    if ckpt and ckpt["dataset"]["fingerprint"] != info["fingerprint"]:
        raise GuppyError(f"{data_dir}: not the dataset this run was trained on. Pass that one.")
    # Under torchrun a step is all processes' rows: the plan of one process with that many.
    plan0 = epoch_batches(train_s, cfg.context, o.batch_size * group.world, o.seed, 0)
    steps_per_epoch = len(plan0)

    model = GPT(cfg).to(device)
    stepper = group.wrap(model)  # DDP under torchrun: its backward averages the gradients
    optimizer = make_optimizer(model, o, device)
    scaler = precision.scaler()
    position, step, loss_sum, loss_n, clock = (0, 0), 0, 0.0, 0, 0.0
    deadline = started + 60 * o.max_minutes if o.max_minutes else None
    if o.max_steps is None:
        o.max_steps = max(1, round(o.epochs * steps_per_epoch))
        if deadline and not ckpt:  # the schedule follows the clock; steps are an estimate
            step_s = time_a_step(model, o, train_s, cfg.context, device, precision, stepper)
            step_s = group.most(step_s)  # the slowest process sets the pace
            # Keep back what the final eval on the whole test split and the run files take.
            eval_tokens = len(test_s) * TEST_TOKENS_PER_CONVERSATION
            final_eval = eval_tokens / (o.batch_size * cfg.context) * step_s / FORWARD_SHARE
            left = deadline - time.monotonic() - final_eval - RUN_FILES_SECONDS
            o.schedule_seconds = group.mean(max(1.0, left))  # one schedule for every process
            eval_batches = EVALS_PER_RUN * math.ceil(EVAL_ROWS / o.batch_size)
            evals = eval_batches * step_s / FORWARD_SHARE
            fitted = int((o.schedule_seconds - evals) / step_s)
            if fitted >= MIN_BUDGET_STEPS:  # the clock decides, past --epochs too
                o.max_steps = fitted
            else:  # too few to warm up and decay: a schedule by steps, past the budget
                say(
                    f"warning: --max-minutes {o.max_minutes:g} is too short for this machine: a "
                    f"step takes {step_s:.2f} s and the evals {evals + final_eval:.0f} s, which "
                    f"leaves {max(0, fitted)} steps; training {MIN_BUDGET_STEPS} instead, past the "
                    "budget. Give more minutes, or --max-steps."
                )
                o.schedule_seconds, deadline = None, None
                o.max_steps = min(o.max_steps, MIN_BUDGET_STEPS)
    o.warmup_steps = o.warmup_steps or max(1, min(WARMUP_MAX, o.max_steps // WARMUP_SHARE))
    o.eval_every = o.eval_every or max(1, o.max_steps // EVALS_PER_RUN)
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        step, position = ckpt["step"], tuple(ckpt["position"])
        loss_sum, loss_n, clock = ckpt["loss_sum"], ckpt["loss_n"], ckpt.get("clock", 0.0)

    def progress() -> float:
        """The share of the schedule done: by the clock for a time budget, else by steps.

        Under torchrun the processes' clocks are averaged, so they all follow one schedule.
        """
        if o.schedule_seconds:
            return group.mean(clock + time.monotonic() - t0) / o.schedule_seconds
        return step_progress(step, o)

    metrics_path = run / "metrics.jsonl"
    records = [r for r in read_metrics(metrics_path) if r["step"] <= step] if ckpt else []
    if group.main:
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    pad = padding_share(train_s, plan0, cfg.context)
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
    say(f"{'resuming at' if ckpt else 'training for'} step {step} of {o.max_steps}")

    def checkpoint() -> None:
        if not group.main:
            return  # process 0 writes; every process holds the same weights and state
        save_checkpoint(
            ckpt_path,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(),
            step=step,
            position=list(position),
            loss_sum=float(loss_sum),  # the losses since the last log line, so it averages
            loss_n=loss_n,  # the same steps whether or not the run stopped in between
            clock=clock + time.monotonic() - t0,  # seconds of schedule spent (time budgets)
            train=asdict(o),
            dataset=info,
            processes=group.world,  # the batches a step holds depend on it
        )

    # Sample replies at each eval from the model itself, as it trains (no copy of its weights).
    engine = Engine(model, tok, prepare=False)

    eval_seconds = 0.0  # kept out of tokens/s: it measures training, not evaluation

    def eval_and_show(max_rows: int | None) -> dict:
        nonlocal eval_seconds
        t = time.monotonic()
        loss, ppl = eval_loss(
            model,
            test_s,
            cfg.context,
            device,
            o.loss_on,
            o.batch_size,
            max_rows,
            precision.autocast,
        )
        say(f"step {step}: eval loss {loss:.3f}, perplexity {ppl:.2f}")
        model.eval()
        # Watch the character appear: the prompts' replies decoded together, each with its own
        # seeded generator inside the engine, so training's RNG is left alone.
        seeds = [o.seed + i for i in range(len(prompts))]
        replies = engine.replies(prompts, seeds, max_new_tokens=48)
        for chat, reply in zip(prompts, replies, strict=True):
            for m in chat:
                say(f"  {'you' if m['role'] == 'user' else m['role']}: {m['content']}")
            say(f"  {persona.name if persona else 'bot'}: {reply.strip()}")
        model.train()
        eval_seconds += time.monotonic() - t
        return {"eval_loss": loss, "perplexity": ppl}

    stepper = torch.compile(stepper) if o.compile else stepper
    stream = shares(train_s, cfg.context, o.batch_size, o.seed, o.loss_on, group, start=position)
    bar = tqdm(
        total=o.max_steps, initial=step, unit="step", disable=not (o.progress and group.main)
    )
    stop = Stop()
    # Why a run stops early, in the order one outranks another when processes see different ones.
    budget = f"--max-minutes {o.max_minutes or 0:g} ran out"
    reasons = [None, budget, f"--stop-after {o.stop_after}", "interrupted"]
    t0, tokens, last_log = time.monotonic(), 0, (time.monotonic(), 0)
    model.train()
    metrics_file = metrics_path.open("a") if group.main else contextlib.nullcontext()
    with stop_on_ctrl_c(stop), metrics_file as metrics:
        while progress() < 1 if o.schedule_seconds else step < o.max_steps:
            if o.stop_after is not None and step >= o.stop_after:
                stop.reason = reasons[2]
            elif deadline and time.monotonic() > deadline and not o.schedule_seconds:
                stop.reason = budget
            if group.together:  # a Ctrl-C or a clock in any process stops all at this step
                stop.reason = reasons[int(group.most(reasons.index(stop.reason)))]
            if stop.reason:
                break
            # --- one step: the next batch, its learning rate, forward, backward, update -------
            share = next(stream)  # this process's rows of the batch (all of them when alone)
            scale = lr_scale(step, progress(), o)
            loss = train_step(
                stepper,
                share.batch.to(device),
                optimizer,
                scaler,
                precision,
                scale,
                o.grad_clip,
                share.weight,
            )
            step, position = step + 1, share.position
            loss_sum, loss_n = loss_sum + loss, loss_n + 1  # a tensor: no wait for the GPU
            tokens += share.tokens
            # --- the step is done; the rest is logging, evals and checkpoints ----------------
            bar.update()
            ending = progress() >= 1 if o.schedule_seconds else step == o.max_steps
            if step % o.log_every == 0 or step % o.eval_every == 0 or ending:
                train_loss = group.mean(float(loss_sum)) / loss_n  # the whole batches' loss
                if group.main:
                    now = time.monotonic()
                    speed = (tokens - last_log[1]) / max(now - last_log[0], 1e-9)
                    record = {"step": step, "train_loss": train_loss}
                    record.update(lr=o.lr * scale, tokens_per_s=round(speed))
                    record["seconds"] = round(clock + now - t0, 1)
                    bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{speed:,.0f}")
                    if step % o.eval_every == 0 and not ending:  # the final eval follows
                        record.update(eval_and_show(EVAL_ROWS))
                        checkpoint()  # so a crash loses at most one eval interval
                    records.append(record)
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                loss_sum, loss_n, last_log = 0.0, 0, (time.monotonic(), tokens)
    bar.close()
    checkpoint()
    group.leave()  # what follows (the final eval, the run files) is process 0's alone
    if stop.reason:
        say(f"stopped at step {step} of {o.max_steps} ({stop.reason}); checkpoint saved.")
        more = f" --nproc {group.world}" if group.together else ""
        say(f"continue with: guppyforge train {data_dir} --out {run} --resume{more}")
        if stop.reason == "interrupted" and raise_on_interrupt and group.main:
            raise KeyboardInterrupt  # the caller (the CLI: exit 130) must not see a success
        return run
    if not group.main:
        return run

    speed = tokens / max(time.monotonic() - t0 - eval_seconds, 1e-9)
    final = eval_and_show(None)  # the whole test split
    if records:
        records[-1].update(final)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    minutes = (time.monotonic() - started) / 60
    results = {"final_eval_loss": final["eval_loss"], "perplexity": final["perplexity"]}
    results.update(steps=step, minutes=round(minutes, 2), tokens_per_s=round(speed))
    train_info = asdict(o) | {"device": str(device), "processes": group.world}
    del train_info["progress"], train_info["resume"]
    train_info |= {"steps_per_epoch": steps_per_epoch, "padding": round(pad, 4)}
    finish_run(run, model, train_info, info, persona, tok.get_vocab_size(), records, results)
    say(
        f"done: eval loss {final['eval_loss']:.3f} in {minutes:.1f} min. Chat: guppyforge chat {run}"
    )
    return run
