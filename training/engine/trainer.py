"""The trainer: a resumable object that owns the data stream, the task (the model with its
objectives, training/tasks/task.py) under DeepSpeed, the random generators and the counters of
one training run, pre-training or fine-tuning.

Each step takes one batch of each data kind the data spec mixes in at that step per micro-step,
runs the task on them (the weighted sum of its objectives' losses) and makes one optimizer step
every `optim.grad_accum` micro-steps. Optional features are extensions (training/engine/
extension.py) whose hooks the step calls; the step itself names none of them. Everything that
must survive a restart is in `state_dict()` / `load_state_dict()` and in the extensions' states;
the checkpoint manager saves them beside the engine's state, every `checkpoint.every_steps`
steps and when SIGUSR1 / SIGTERM arrives.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import yaml

from data_pipeline.config import ConfigError
from data_pipeline.kinds import data_kind
from training.engine.checkpoint import RUN_CONFIG_FILE, CheckpointError, CheckpointManager, find_resumable
from training.engine.extension import Extension
from training.engine.metrics import MetricsLogger, StepFlops, drop_rows_after
from training.engine.progress import Progress
from training.engine.run_config import RunConfig, deepspeed_config
from training.runtime import distributed, rng_state
from training.runtime.run_lock import LockHeld, RunLock
from training.runtime.heartbeats import Heartbeat
from training.runtime.signals import REQUEUE_EXIT_CODE, LauncherWatch, PreemptionHandler

# Testing the guard: X2VLM_NONFINITE_AT=STEP:MICRO:RANK makes the loss of micro-step MICRO
# (from 0) of step STEP (from 1) on RANK NaN; several, comma-separated.
NONFINITE_ENV = "X2VLM_NONFINITE_AT"


class NonFiniteLossError(RuntimeError):
    pass


def move_batch(batch: dict, device: torch.device) -> dict:
    """The batch's tensors to the device as they are; other entries stay on the host. Pixels
    go as uint8 (the vision tower normalises them and casts to its weights' dtype) and boxes
    and other targets stay float32 whatever the compute dtype: a box coordinate rounded to
    bf16 would move the target of the box losses by up to 1/256."""
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()
            if isinstance(value, torch.Tensor)}


def apply_global_batch(data_spec, config: RunConfig, world_size: int) -> None:
    """optim.global_batch fixes samples per optimizer step for a kind across all ranks, so that
    a resume on another world size keeps the schedule's meaning; each corpus of the kind then
    takes global / (world size x grad_accum) per micro-step."""
    for kind, total in config.optim.global_batch.items():
        key = f"optim.global_batch.{kind}"
        corpora = data_spec.corpora_of(kind)
        if not corpora:
            raise ConfigError(f"{config.source}: {key}: the data config has no corpus of kind {kind}")
        share = world_size * config.optim.grad_accum
        if total % share:
            raise ConfigError(f"{config.source}: '{key}' = {total} cannot be split over {world_size} ranks x "
                              f"grad_accum {config.optim.grad_accum}: it must be a multiple of {share}")
        for corpus in corpora:
            corpus.batch_size = total // share


def plain_numbers(metrics: dict | None) -> dict | None:
    """METRICS with ints and floats of Python's own types, which a weights-only load accepts."""
    if metrics is None:
        return None
    return {key: value if isinstance(value, int) else float(value) for key, value in metrics.items()}


def global_batch(data_spec, world_size: int, grad_accum: int) -> dict[str, int]:
    """Samples of each corpus per optimizer step over all ranks, when it is drawn (DATA_SPEC's
    batch sizes per rank and micro-step, after `apply_global_batch`)."""
    return {c.name: c.batch_size * world_size * grad_accum for c in data_spec.corpora}


def batch_summary(data_spec, world_size: int, grad_accum: int) -> str:
    """The line a run starts with: its world size and the samples of each corpus per optimizer
    step over all ranks (its global batch), on which every figure of the run depends."""
    batch = global_batch(data_spec, world_size, grad_accum)
    corpora = ", ".join(f"{c.name} ({c.kind}) {batch[c.name]}" for c in data_spec.corpora)
    return (f"[run] world size {world_size} x grad_accum {grad_accum}; global batch (samples per optimizer step when "
            f"the corpus is drawn): {corpora}")


def check_model_matches_data(model, data_spec, source: str) -> None:
    image_size = model.config.vision.image_size
    if image_size != data_spec.image_res:
        raise ConfigError(f"{source}: model 'vision.image_size' is {image_size} but data 'image_res' is "
                          f"{data_spec.image_res}; they must agree")
    data_grid = data_spec.image_res // data_spec.patch_size
    if data_grid != model.vision.grid_size:
        raise ConfigError(f"{source}: data 'patch_size' {data_spec.patch_size} gives a {data_grid}x{data_grid} patch "
                          f"grid but the vision tower has {model.vision.grid_size}x{model.vision.grid_size}; the "
                          f"region patch masks would not fit the vision tokens")
    from data_pipeline.text.encoder import load_tokenizer
    from training.model.text import tokenizer_problem

    try:
        tokenizer = load_tokenizer(data_spec.text.tokenizer)
    except ConfigError as error:
        raise ConfigError(f"{source}: data.{error}") from None
    tokens = len(tokenizer)
    if tokens > model.config.text.vocab_size:
        raise ConfigError(f"{source}: the tokenizer {data_spec.text.tokenizer} has {tokens} tokens but the model's "
                          f"'text.vocab_size' is {model.config.text.vocab_size}; its ids would not fit the embeddings")
    problem = tokenizer_problem(model.config.text, tokenizer.pad_token_id)
    if problem:
        raise ConfigError(f"{source}: tokenizer {data_spec.text.tokenizer}: {problem}")


def compute_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def planted_nonfinite(step: int, micro: int, rank: int) -> bool:
    return f"{step}:{micro}:{rank}" in os.environ.get(NONFINITE_ENV, "").split(",")


def hold_output_dir(output_dir: Path, rank: int) -> RunLock | None:
    """Rank 0 takes the run's lock; every rank learns the outcome (LockHeld on all when refused)."""
    lock, refusal = None, None
    if rank == 0:
        lock = RunLock(output_dir)
        try:
            note = lock.acquire()
            if note:
                print(f"[lock] {note}", file=sys.stderr, flush=True)
        except LockHeld as error:
            refusal = str(error)
    refusal = distributed.broadcast(refusal)
    if refusal:
        raise LockHeld(refusal)
    return lock


class Trainer:
    def __init__(self, config: RunConfig, resume: str | None, extensions: Sequence[Extension] = ()):
        """CONFIG's run, resumed as RESUME says (None: `checkpoint.resume`), with the optional
        features EXTENSIONS (training/extensions: `enabled_extensions(config)` gives those the
        config turns on)."""
        self.config = config
        self.extensions = list(extensions)
        self.lock = None
        # Before the process group: whether a launcher started this rank is read from RANK.
        self.signals = None
        self.launcher_watch = LauncherWatch.for_this_rank(before_exit=self._release_lock, on_gone=self._launcher_gone,
                                                          grace_s=config.guard.launcher_grace_s)
        self.rank, self.world_size, self.device = distributed.init(timeout_s=config.guard.collective_timeout_s)
        # First, so that a pre-emption during start-up checkpoints after step 1 instead of killing.
        self.signals = PreemptionHandler(config.guard.signals).install()
        self.output_dir = Path(config.run.output_dir)
        self.heartbeat = Heartbeat(self.output_dir, self.rank)
        self.heartbeat.beat(0, force=True)
        self.is_main = self.rank == 0
        self.dtype = compute_dtype(config.optim.precision)
        self.fingerprint = config.fingerprint()
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.metrics = self.progress = self.loader = None
        self.exit_code: int | None = None  # what run() returned; None until it returns
        self.last_eval, self.last_eval_step = None, None  # held-out metrics for the export's model card
        self.lock = hold_output_dir(self.output_dir, self.rank)
        try:
            self._build(resume)
        except BaseException:
            self.close()
            raise

    def _build(self, resume: str | None) -> None:
        config = self.config
        from data_pipeline.loader.mixer import MixedLoader
        from data_pipeline.spec import parse_data_spec
        from training.model import create_model
        from training.objectives.settings import parse_loss_settings
        from training.tasks.task import Task, upgraded_parameter_name

        self.data_spec = parse_data_spec(config.data, root=config.reference_dirs.get("data"))
        apply_global_batch(self.data_spec, config, self.world_size)
        if self.is_main:
            print(batch_summary(self.data_spec, self.world_size, config.optim.grad_accum), flush=True)
        # Built first: a missing shard or a shard count the ranks cannot share fails before any
        # model is built.
        loader_options = {}
        for extension in self.extensions:
            extension.setup(self)
            loader_options.update(extension.loader_options(self))
        self.loader = MixedLoader(self.data_spec, self.rank, self.world_size, **loader_options)
        # Every rank builds identical initial weights; ZeRO-3 partitions each rank's own copy.
        rng_state.seed_everything(config.run.seed)
        model = create_model(config.model, load_pretrained=False)
        check_model_matches_data(model, self.data_spec, config.source)
        loaded_names = model.pretrained_parameter_names(model.load_pretrained_towers())
        # Before DeepSpeed partitions the model: every rank copies the same weights in, and
        # they count as pre-trained for the learning rates below. Also on a resume, where the
        # checkpoint's weights then replace them, so that the optimizer's groups are the same.
        init_report = self._init_from(model)
        if init_report is not None:
            loaded_names |= set(init_report.loaded)
        task = Task(model, parse_loss_settings(model.config.losses, "model.losses"),
                    batches=tuple(data_kind(kind).batch for kind in self.data_spec.kinds()))
        for extension in self.extensions:
            extension.before_engine(self, task)
        from training.engine.optim import build_scheduler, parameter_groups

        loaded_names = {f"model.{name}" for name in loaded_names}
        groups = parameter_groups(
            task.named_parameters(), config.optim.lr, config.optim.weight_decay,
            # Parameters the pre-trained towers did not provide learn faster, as X²-VLM trains;
            # with no pre-trained towers every parameter is new and none is favoured.
            is_new=lambda name: bool(loaded_names) and name not in loaded_names,
            new_lr_scale=config.optim.new_param_lr_scale)
        optimizer = torch.optim.AdamW(groups, lr=config.optim.lr, betas=tuple(config.optim.betas), eps=config.optim.eps,
                                      fused=self.device.type == "cuda")
        scheduler = build_scheduler(optimizer, config.optim.warmup_steps, config.run.max_steps,
                                    config.optim.schedule, config.optim.min_lr_ratio)

        checkpoint_root = self.output_dir / "checkpoints"
        resume_from = find_resumable(checkpoint_root, resume or config.checkpoint.resume, self.rank, self.world_size)
        if resume_from and resume_from.fingerprint != self.fingerprint and not config.checkpoint.allow_config_change:
            raise ConfigError(
                f"{config.source}: the checkpoint {resume_from.path} was written with a different model, data or "
                f"optim config (fingerprint {resume_from.fingerprint}, now {self.fingerprint}); set "
                f"checkpoint.allow_config_change=true to resume anyway")
        universal = bool(resume_from) and resume_from.world_size != self.world_size
        ds_config = deepspeed_config(config, micro_batch_size=self.data_spec.corpora[0].batch_size)
        if universal:
            ds_config["checkpoint"] = {"load_universal": True}

        import deepspeed
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=task, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.task = self.engine.module
        # DeepSpeed casts parameters to bf16/fp16 but not buffers; a float32 buffer (BEiT's zero
        # key bias) would then promote half of an attention input back to float32.
        for buffer in self.engine.module.buffers():
            if buffer.is_floating_point():
                buffer.data = buffer.data.to(self.dtype)
        for extension in self.extensions:
            extension.after_engine(self)
        # The extensions' states restore before the trainer's: grouping's records are cut back to
        # the checkpoint before the data stream rereads them.
        states = {extension.name: extension for extension in self.extensions if extension.stateful}
        self.checkpoints = CheckpointManager(checkpoint_root, self.engine, {**states, "trainer": self}, self.rank,
                                             self.world_size, config.checkpoint.keep_last, config.checkpoint.keep_every,
                                             parameter_name=upgraded_parameter_name)
        if resume_from:
            self.checkpoints.load(resume_from)
            if self.step != resume_from.step:
                raise CheckpointError(f"{resume_from.path}: the trainer state is of step {self.step}, the marker says "
                                      f"{resume_from.step}")
            if self.is_main:
                how = (f"universal, from {resume_from.world_size} ranks to {self.world_size}" if universal
                       else "same world size")
                print(f"[resume] step {resume_from.step} from {resume_from.path} ({how})", flush=True)
        else:
            rng_state.seed_everything(config.run.seed + self.rank)
        if init_report is not None and self.is_main:
            self._report_init(init_report, resume_from)

        # Rows of steps after the checkpoint were written before the run stopped; they come again.
        if self.is_main:
            dropped = drop_rows_after(self.output_dir / "metrics.jsonl", self.step)
            if dropped:
                print(f"[metrics] metrics.jsonl: dropped {dropped} rows after step {self.step}, where this run "
                      f"starts", flush=True)
        self.progress = Progress(self.step, config.run.max_steps, enabled=self.is_main,
                                 bar=config.logging.progress_bar, every=config.logging.every_steps)
        reporters = config.logging.reporters()
        wandb = None
        if self.is_main and "wandb" in reporters:
            from training.engine.wandb_reporter import WandbReporter

            wandb = WandbReporter(self.output_dir, config.logging.wandb, config.run.name, self.saved_run_config())
        self.metrics = MetricsLogger(self.output_dir, enabled=self.is_main, tensorboard="tensorboard" in reporters,
                                     world_size=self.world_size, device=self.device, echo=self.progress.echo,
                                     wandb=wandb)
        self.flops = StepFlops()
        for extension in self.extensions:
            extension.after_restore(self)

    def _init_from(self, model):
        """model.init_from's weights copied into MODEL; their report (None without init_from)."""
        path = model.config.init_from
        if not path:
            return None
        from training.folders.init_from import InitFromError, init_from, tokenizer_differs

        try:
            report = init_from(model, path)
        except InitFromError as error:
            raise ConfigError(f"{self.config.source}: model.init_from: {error}") from None
        if self.is_main and tokenizer_differs(path, self.data_spec.text.tokenizer):
            print(f"[init] warning: the tokenizer of {path} has another vocabulary than data.text.tokenizer "
                  f"{self.data_spec.text.tokenizer}: its token ids will not mean what the weights learned",
                  file=sys.stderr, flush=True)
        return report

    def _report_init(self, report, resume_from) -> None:
        if resume_from:
            print(f"[init] resuming from {resume_from.path}: its weights replace those of model.init_from "
                  f"{report.source} (a checkpoint in the output folder wins over init_from)", flush=True)
            return
        from training.folders.init_from import REPORT_FILE

        path = report.write(self.output_dir / REPORT_FILE)
        for line in report.lines():
            print(f"[init] {line}", flush=True)
        print(f"[init] every key in {path}; optimizer and schedule start at step 0", flush=True)

    # -- state that survives a restart ---------------------------------------------------------
    def state_dict(self) -> dict:
        # The last held-out figures travel with the checkpoint: a run resumed at its end (a
        # finished run started again) exports the card and prints the figures it had.
        return {"step": self.step, "nonfinite_total": self.nonfinite_total,
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "rng": rng_state.capture(), "data": self.loader.state_dict(),
                "last_eval": {"step": self.last_eval_step, "metrics": plain_numbers(self.last_eval)}}

    def _restore_last_eval(self, state: dict) -> None:
        last = state.get("last_eval") or {}  # absent from checkpoints written before it was kept
        self.last_eval, self.last_eval_step = last.get("metrics"), last.get("step")

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            raise CheckpointError("the checkpoint holds no trainer state")
        self.step = state["step"]
        self.nonfinite_total = state["nonfinite_total"]
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]
        rng_state.restore(state["rng"])
        self.loader.load_state_dict(state["data"])
        self._restore_last_eval(state)

    def load_resharded(self, states: list[dict | None]) -> None:
        """The states of every rank of a run with another world size: the counters (the same
        on every rank), the unread rest of the data re-dealt, fresh generators per rank."""
        if any(state is None for state in states):
            raise CheckpointError("the checkpoint holds no trainer state for every rank")
        first = states[0]
        self.step = first["step"]
        self.nonfinite_total = first["nonfinite_total"]
        self.nonfinite_in_a_row = first["nonfinite_in_a_row"]
        self.loader.load_resharded([state["data"] for state in states])
        rng_state.seed_everything(self.config.run.seed + self.rank + 1000 * self.step)
        self._restore_last_eval(first)

    def extension(self, name: str) -> Extension | None:
        """The extension of that name, if the run has it."""
        return next((e for e in self.extensions if e.name == name), None)

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> int:
        for extension in self.extensions:
            extension.before_run(self)
        code = self.exit_code = self._run()
        for extension in self.extensions:
            extension.after_run(self, code)
        return code

    def _run(self) -> int:
        config = self.config
        while self.step < config.run.max_steps:
            figures = self.train_step()
            self.step += 1
            self.heartbeat.beat(self.step)
            self.progress.update(self.step, figures["loss"], figures["samples"])
            stop = figures["stop"]
            if self.step % config.logging.every_steps == 0 or self.step == config.run.max_steps:
                self.metrics.flush(self.step, {"nonfinite_skipped": self.nonfinite_total})
            if config.eval.every_steps and (self.step % config.eval.every_steps == 0 or self.step == config.run.max_steps):
                self.evaluate()
            if stop or self.step % config.checkpoint.every_steps == 0 or self.step == config.run.max_steps:
                self.save()
            if stop:
                if self.is_main:
                    self.progress.echo(f"[signal] checkpointed at step {self.step}; exiting with {REQUEUE_EXIT_CODE} to requeue")
                return REQUEUE_EXIT_CODE
        if config.run.export_on_finish:
            self.export_from_memory(self.output_dir / "export")
        if self.is_main:
            engine = self.engine
            self.progress.echo(f"[done] {self.step} steps (DeepSpeed: {engine.global_steps} optimizer steps, "
                               f"{engine.skipped_steps} skipped, {engine.micro_steps} micro-steps); "
                               f"data: {self.loader.stats()}")
        return 0

    def train_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-steps; returns the loss figures (each the
        mean of its finite values over micro-steps and ranks) and `stop`, whether any rank was
        asked to stop (a pre-emption signal).

        The figures stay on the device until the step ends: one all-reduce per micro-step sums
        them over ranks together with a non-finite flag and the stop flag, and a single transfer
        to the host per optimizer step reads them all. Nothing else in the step makes the host
        wait for the device (tests/integration/test_host_syncs.py counts)."""
        from data_pipeline.kinds.collate import rows_per_batch

        accum = self.config.optim.grad_accum
        for extension in self.extensions:
            extension.before_step(self)
        # figure name -> (sum of its finite values, how many there were) over micro-steps and ranks
        sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        nonfinite = stop = None
        data_seconds = compute_seconds = 0.0
        samples = 0
        skipped_before = self.engine.skipped_steps
        kinds: list[frozenset] = []  # the batch kinds of each micro-step, for its FLOPs
        for micro in range(accum):
            t0 = time.perf_counter()
            batches = next(self.loader)
            t1 = time.perf_counter()
            inputs = {}  # batch name -> its fields on the device
            for kind, batch in batches.items():
                inputs[data_kind(kind).batch] = model_batch = move_batch(batch, self.device)
                # The bound the losses pad to where ranks exchange rows: the same on every rank.
                model_batch["rows"] = rows_per_batch(self.data_spec.corpora_of(kind))
            for extension in self.extensions:
                extension.before_forward(self, batches, inputs)
            samples += sum(len(batch.get("keys", ())) for batch in batches.values())
            with self.flops.counting(inputs):
                out = self.engine(inputs)
                loss = out["loss"]
                for extension in self.extensions:
                    extension.after_forward(self, batches, inputs, out)
                if planted_nonfinite(self.step + 1, micro, self.rank):
                    loss = loss * math.nan
                names = ["loss"] + [f"{kind}/{term}" for group in ("losses", "figures")
                                    for kind, terms in out[group].items() for term in terms]
                values = torch.stack([loss.detach().float()] + [value.detach().float()
                                                                for group in ("losses", "figures")
                                                                for terms in out[group].values()
                                                                for value in terms.values()])
                finite = torch.isfinite(values)
                # Summed over ranks in one all-reduce, on the device: the finite values, how many
                # ranks had them, whether any rank's loss was not finite, whether any was asked to stop.
                summed = distributed.all_reduce_sum(torch.cat([
                    torch.where(finite, values, 0.0), finite.float(), (~finite[:1]).float(),
                    torch.full((1,), float(self.signals.requested), device=values.device)]))
                bad = summed[-2] > 0
                # Backward and step on every micro-step keep DeepSpeed's micro-step count, from which
                # it tells the accumulation boundary, equal to the trainer's. A non-finite loss on any
                # rank makes its micro-step's gradients NaN on every rank (a factor chosen on the
                # device), so that DeepSpeed's own overflow check (ZeRO 1-3, any precision) skips the
                # whole optimizer step at the boundary: no update, gradients cleared, the schedule
                # not advanced.
                self.engine.backward(loss * torch.where(bad, math.nan, 1.0).to(loss.dtype))
            self.engine.step()
            kinds.append(frozenset(inputs))
            compute_seconds += time.perf_counter() - t1
            data_seconds += t1 - t0
            count = len(names)
            for i, name in enumerate(names):
                total, seen = summed[i], summed[count + i]
                sums[name] = (sums[name][0] + total, sums[name][1] + seen) if name in sums else (total, seen)
            nonfinite = bad if nonfinite is None else nonfinite | bad
            stop = summed[-1] > 0 if stop is None else stop | (summed[-1] > 0)
        for extension in self.extensions:
            extension.after_optimizer_step(self)  # on the device, nothing read
        # The one transfer to the host of the step.
        read = torch.stack([value for pair in sums.values() for value in pair]
                           + [nonfinite.float(), stop.float()]).tolist()
        for extension in self.extensions:
            extension.after_step(self)
        figures = {name: read[2 * i] / read[2 * i + 1] if read[2 * i + 1] else math.nan
                   for i, name in enumerate(sums)}
        nonfinite, stop = bool(read[-2]), bool(read[-1])
        self._check_counters(nonfinite, self.engine.skipped_steps - skipped_before)
        if nonfinite:
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            if self.is_main:
                print(f"[guard] step {self.step + 1}: non-finite loss, update skipped "
                      f"({self.nonfinite_in_a_row} in a row)", file=sys.stderr, flush=True)
            if self.nonfinite_in_a_row >= self.config.guard.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_a_row} non-finite losses in a row (guard.max_consecutive_nonfinite="
                    f"{self.config.guard.max_consecutive_nonfinite}); last figures {figures}")
        else:
            self.nonfinite_in_a_row = 0
        figures["lr"] = self.scheduler.get_last_lr()[0]
        flops = [self.flops.of(k) for k in kinds]
        self.metrics.record(figures, samples, data_seconds, compute_seconds,
                            None if None in flops else sum(flops))
        return {**figures, "samples": samples * self.world_size, "stop": stop}

    def _check_counters(self, nonfinite: bool, engine_skipped: int) -> None:
        """DeepSpeed's step counts follow the trainer's, and a step with a non-finite loss was
        not applied; anything else would go on training from a state nobody asked for."""
        engine, accum, step = self.engine, self.config.optim.grad_accum, self.step + 1
        if engine.global_steps != step or engine.micro_steps != step * accum:
            raise RuntimeError(f"DeepSpeed counts {engine.global_steps} optimizer steps and {engine.micro_steps} "
                               f"micro-steps after trainer step {step} of {accum} micro-steps; they must agree")
        if nonfinite and not engine_skipped:
            raise RuntimeError(f"step {step}: a loss was non-finite but DeepSpeed applied the update")

    def evaluate(self) -> dict:
        """The held-out sets' metrics, each as its kind evaluates, on every rank (the ITM
        re-ranking is shared)."""
        from training.evaluation import evaluate
        from training.evaluation.captioning import CaptioningSettings
        from training.evaluation.eval_sets import eval_spec_like_training

        section = self.config.eval
        spec = eval_spec_like_training(self.data_spec, section.named_sets(), batch_size=section.batch_size)
        captioning = CaptioningSettings(section.caption_max_len, section.caption_beam) if section.captioning else None
        started = time.perf_counter()
        metrics = evaluate(self.task.model, spec, itm_top_k=section.itm_top_k, max_samples=section.max_samples,
                           captioning=captioning, skip_empty=True)
        metrics["eval_s"] = time.perf_counter() - started
        self.metrics.write({"step": self.step, **metrics}, "eval")
        self.last_eval, self.last_eval_step = metrics, self.step
        return metrics

    def save(self) -> None:
        started = time.perf_counter()
        path = self.checkpoints.save(self.step, self.fingerprint,
                                     files={RUN_CONFIG_FILE: yaml.safe_dump(self.saved_run_config(), sort_keys=False)})
        if self.is_main:
            self.progress.echo(f"[checkpoint] step {self.step} -> {path} ({time.perf_counter() - started:.2f} s)")

    def saved_run_config(self) -> dict:
        """The run config a checkpoint keeps: as given, with the tokenizer folder resolved to an
        absolute path, which x2vlm-export copies into the model folder."""
        config = self.config.to_dict()
        config["data"]["text"]["tokenizer"] = str(Path(self.data_spec.text.tokenizer).resolve())
        return config

    def export_from_memory(self, out: Path) -> None:
        """The model folder of the weights in memory: the optimizer's fp32 master copy (gathered
        from every ZeRO partition: a collective, so every rank takes part)."""
        from deepspeed.utils import safe_get_full_fp32_param
        from training.folders.model_folder import write_model_folder

        weights = {}
        for name, param in self.task.model.named_parameters():
            full = safe_get_full_fp32_param(param)
            weights[name] = full.detach().float().cpu().contiguous()
        if self.is_main:
            write_model_folder(out, weights, self.config.model, self.data_spec.text.tokenizer, self.model_card())
            self.progress.echo(f"[export] step {self.step} -> {out}")

    def model_card(self):
        """The card of the weights in memory (fine-tuning says more of its source)."""
        from training.folders.card_contents import training_summary
        from training.folders.model_folder import ModelCard, data_summary

        grad_accum = self.config.optim.grad_accum
        card = ModelCard(source={"kind": "training run", "run": self.config.run.name,
                                 "config": Path(self.config.source).name},
                         steps=self.step, data=data_summary(self.data_spec),
                         metrics=self.last_eval if self.last_eval_step == self.step else None,
                         training=training_summary(self.config.to_dict(),
                                                   global_batch(self.data_spec, self.world_size, grad_accum),
                                                   self.world_size, grad_accum, self.step))
        for extension in self.extensions:
            extension.describe_card(self, card)
        return card

    def _launcher_gone(self) -> bool:
        """The launcher is gone (LauncherWatch): a checkpoint after this step, as after a
        pre-emption signal; False before the signal handler exists (the rank then exits at once)."""
        if self.signals is None:
            return False
        self.signals.request("the launcher is gone")
        return True

    def _release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.metrics is not None:
            self.metrics.close(1 if self.exit_code is None else self.exit_code)
        if self.loader is not None:
            self.loader.close()
        for extension in self.extensions:
            extension.close()
        self._release_lock()
