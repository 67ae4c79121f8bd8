"""X²-VLM pre-training with DeepSpeed ZeRO.

  deepspeed --num_gpus N training/pretrain.py --config RUN.yaml [--set key=value ...]
  python -m training.pretrain --config RUN.yaml          (one process)

Each step takes an image-text batch, a region batch and (at its ratio) a video batch, sums
their weighted losses and makes one optimizer step. Checkpoints are written every
`checkpoint.every_steps` steps and when SIGUSR1 / SIGTERM arrives; `--resume auto` (the
default) continues from the newest complete checkpoint, exactly where the data stream,
the random generators and the optimizer stood.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import yaml

from training import distributed, rng_state
from training.checkpoint import RUN_CONFIG_FILE, CheckpointManager
from training.config import ConfigError, RunConfig, deepspeed_config, load_run_config
from training.metrics import MetricsLogger
from training.signals import REQUEUE_EXIT_CODE, PreemptionHandler

NONFINITE_EXIT_CODE = 3
# The data pipeline's corpus kinds and the model's batch arguments.
MODEL_KIND = {"image_text": "image", "region": "region", "video_text": "video"}


class NonFiniteLossError(RuntimeError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="x2vlm-pretrain",
        description="X²-VLM pre-training with DeepSpeed ZeRO. Run under the `deepspeed` launcher for several "
                    "ranks, or as a plain process for one.",
        epilog=f"Exit codes: 0 done; {REQUEUE_EXIT_CODE} checkpointed after a pre-emption signal (requeue the "
               f"job); {NONFINITE_EXIT_CODE} too many non-finite losses in a row; 2 configuration error.",
    )
    parser.add_argument("--config", required=True, type=Path, help="run config YAML (see configs/runs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)")
    parser.add_argument("--resume", default=None,
                        help="'auto' (newest complete checkpoint, the default), 'none', or a checkpoint folder")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return parser.parse_args(argv)


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
            raise ConfigError(f"{config.source}: '{key}': the data config has no corpus of kind {kind!r}")
        share = world_size * config.optim.grad_accum
        if total % share:
            raise ConfigError(f"{config.source}: '{key}' = {total} cannot be split over {world_size} ranks x "
                              f"grad_accum {config.optim.grad_accum}: it must be a multiple of {share}")
        for corpus in corpora:
            corpus.batch_size = total // share


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
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(data_spec.text.tokenizer))
    if tokens > model.config.text.vocab_size:
        raise ConfigError(f"{source}: the tokenizer {data_spec.text.tokenizer} has {tokens} tokens but the model's "
                          f"'text.vocab_size' is {model.config.text.vocab_size}; its ids would not fit the embeddings")


def compute_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


class Trainer:
    def __init__(self, config: RunConfig, resume: str | None):
        self.config = config
        self.rank, self.world_size, self.device = distributed.init()
        # First, so that a pre-emption during start-up checkpoints after step 1 instead of killing.
        self.signals = PreemptionHandler(config.guard.signals).install()
        self.output_dir = Path(config.run.output_dir)
        self.is_main = self.rank == 0
        self.dtype = compute_dtype(config.optim.precision)
        self.fingerprint = config.fingerprint()

        from data_pipeline.loader.mixer import MixedLoader
        from data_pipeline.spec import parse_data_spec
        from training.model import create_model

        self.data_spec = parse_data_spec(config.data, root=config.reference_dirs.get("data"))
        apply_global_batch(self.data_spec, config, self.world_size)
        # Built first: a missing shard or a shard count the ranks cannot share fails before any
        # model is built.
        self.loader = MixedLoader(self.data_spec, self.rank, self.world_size)
        # Every rank builds identical initial weights; ZeRO-3 partitions each rank's own copy.
        rng_state.seed_everything(config.run.seed)
        model = create_model(config.model, load_pretrained=False)
        check_model_matches_data(model, self.data_spec, config.source)
        loaded_names = model.pretrained_parameter_names(model.load_pretrained_towers())
        from training.optim import build_scheduler, parameter_groups

        groups = parameter_groups(
            model.named_parameters(), config.optim.lr, config.optim.weight_decay,
            # Parameters the pre-trained towers did not provide learn faster, as X²-VLM trains;
            # with no pre-trained towers every parameter is new and none is favoured.
            is_new=lambda name: bool(loaded_names) and name not in loaded_names,
            new_lr_scale=config.optim.new_param_lr_scale)
        optimizer = torch.optim.AdamW(groups, lr=config.optim.lr, betas=tuple(config.optim.betas), eps=config.optim.eps,
                                      fused=self.device.type == "cuda")
        scheduler = build_scheduler(optimizer, config.optim.warmup_steps, config.run.max_steps,
                                    config.optim.schedule, config.optim.min_lr_ratio)

        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", self.rank, self.world_size,
                                             distributed.barrier, config.checkpoint.keep_last, config.checkpoint.keep_every)
        self.resume_from = self.checkpoints.resolve(resume or config.checkpoint.resume)
        if self.resume_from and self.resume_from.fingerprint != self.fingerprint and not config.checkpoint.allow_config_change:
            raise ConfigError(
                f"{config.source}: the checkpoint {self.resume_from.path} was written with a different model, data or "
                f"optim config (fingerprint {self.resume_from.fingerprint}, now {self.fingerprint}); set "
                f"checkpoint.allow_config_change=true to resume anyway")
        universal = bool(self.resume_from) and self.resume_from.world_size != self.world_size
        ds_config = deepspeed_config(config, micro_batch_size=self.data_spec.corpora[0].batch_size)
        if universal:
            ds_config["checkpoint"] = {"load_universal": True}

        import deepspeed
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        # DeepSpeed casts parameters to bf16/fp16 but not buffers; a float32 buffer (BEiT's zero
        # key bias) would then promote half of an attention input back to float32.
        for buffer in self.engine.module.buffers():
            if buffer.is_floating_point():
                buffer.data = buffer.data.to(self.dtype)
        self.step = 0
        if self.resume_from:
            self._resume(universal)
        else:
            rng_state.seed_everything(config.run.seed + self.rank)

        self.metrics = MetricsLogger(self.output_dir, enabled=self.is_main, tensorboard=config.logging.tensorboard,
                                     world_size=self.world_size)
        self.keys_log = None
        if config.logging.trained_keys:
            (self.output_dir / "trained_keys").mkdir(parents=True, exist_ok=True)
            self.keys_log = open(self.output_dir / "trained_keys" / f"rank{self.rank:05d}.jsonl", "a", buffering=1)
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0

    def _resume(self, universal: bool) -> None:
        info = self.resume_from
        own, states = self.checkpoints.load(self.engine, info, universal)
        if own is not None:
            self.loader.load_state_dict(own["data"])
            rng_state.restore(own["rng"])
        else:
            self.loader.load_resharded([s["data"] for s in states])
            rng_state.seed_everything(self.config.run.seed + self.rank + 1000 * info.step)
        self.step = info.step
        if self.is_main:
            how = f"universal, from {info.world_size} ranks to {self.world_size}" if universal else "same world size"
            print(f"[resume] step {info.step} from {info.path} ({how})", flush=True)

    def evaluate(self) -> dict:
        """Held-out retrieval and grounding metrics, on every rank (the ITM re-ranking is shared)."""
        from training.evaluation import evaluate
        from training.evaluation.data import eval_spec_like_training

        section = self.config.eval
        spec = eval_spec_like_training(self.data_spec, section.image_shards, section.region_shards,
                                       section.video_shards, batch_size=section.batch_size)
        started = time.perf_counter()
        metrics = evaluate(self.engine.module, spec, itm_top_k=section.itm_top_k, max_samples=section.max_samples)
        metrics["eval_s"] = time.perf_counter() - started
        self.metrics.write({"step": self.step, **metrics}, "eval")
        return metrics

    def save(self) -> None:
        state = {"step": self.step, "data": self.loader.state_dict(), "rng": rng_state.capture(),
                 "nonfinite_total": self.nonfinite_total}
        path = self.checkpoints.save(self.engine, self.step, state, self.fingerprint,
                                     files={RUN_CONFIG_FILE: yaml.safe_dump(self.config.to_dict(), sort_keys=False)})
        if self.is_main:
            print(f"[checkpoint] step {self.step} -> {path}", flush=True)

    def train_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-steps; returns the loss figures."""
        figures: dict[str, float] = {}
        data_seconds = compute_seconds = 0.0
        samples = 0
        skipped = False
        for _ in range(self.config.optim.grad_accum):
            t0 = time.perf_counter()
            batches = next(self.loader)
            t1 = time.perf_counter()
            if self.keys_log is not None:
                self.keys_log.write(json_line(self.step, batches))
            inputs = {MODEL_KIND[kind]: move_batch(batch, self.device) for kind, batch in batches.items()}
            samples += sum(len(batch.get("keys", ())) for batch in batches.values())
            out = self.engine(**inputs)
            loss = out["loss"]
            names = ["loss"] + [f"{kind}/{term}" for kind, terms in out["losses"].items() for term in terms]
            # One host transfer for every figure of the micro-step (and the finiteness check).
            values = torch.stack([loss.detach().float()] + [value.detach().float() for terms in out["losses"].values()
                                                            for value in terms.values()]).tolist()
            nonfinite, = distributed.all_reduce_flags([not math.isfinite(values[0])], self.device)
            if nonfinite:
                skipped = True
            else:
                self.engine.backward(loss)
                self.engine.step()
            compute_seconds += time.perf_counter() - t1
            data_seconds += t1 - t0
            for name, value in zip(names, values):
                figures[name] = figures.get(name, 0.0) + value / self.config.optim.grad_accum
        if skipped:
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
        self.metrics.record(figures, samples, data_seconds, compute_seconds)
        return figures

    def run(self) -> int:
        config = self.config
        while self.step < config.run.max_steps:
            self.train_step()
            self.step += 1
            stop, = distributed.all_reduce_flags([self.signals.requested], self.device)
            if self.step % config.logging.every_steps == 0 or self.step == config.run.max_steps:
                self.metrics.flush(self.step, {"nonfinite_skipped": self.nonfinite_total})
            if config.eval.every_steps and (self.step % config.eval.every_steps == 0 or self.step == config.run.max_steps):
                self.evaluate()
            if stop or self.step % config.checkpoint.every_steps == 0 or self.step == config.run.max_steps:
                self.save()
            if stop:
                if self.is_main:
                    print(f"[signal] checkpointed at step {self.step}; exiting with {REQUEUE_EXIT_CODE} to requeue",
                          flush=True)
                return REQUEUE_EXIT_CODE
        if config.run.export_on_finish:
            self.export_from_memory(self.output_dir / "export")
        if self.is_main:
            print(f"[done] {self.step} steps; data: {self.loader.stats()}", flush=True)
        return 0

    def export_from_memory(self, out: Path) -> None:
        """Consolidated fp32 weights straight from the optimizer's master copy (gathered from
        every ZeRO partition: a collective, so every rank takes part)."""
        from deepspeed.utils import safe_get_full_fp32_param
        from training.export import write_export

        weights = {}
        for name, param in self.engine.module.named_parameters():
            full = safe_get_full_fp32_param(param)
            weights[name] = full.detach().float().cpu().contiguous()
        if self.is_main:
            write_export(weights, self.config.model, out, source=f"{self.output_dir} step {self.step} (in memory)")
            print(f"[export] step {self.step} -> {out}", flush=True)

    def close(self) -> None:
        self.metrics.close()
        self.loader.close()
        if self.keys_log:
            self.keys_log.close()


def json_line(step: int, batches: dict) -> str:
    return json.dumps({"step": step + 1, **{kind: {"corpus": batch.get("corpus"), "keys": list(batch.get("keys", ())),
                                                  "epochs": list(batch.get("epochs", ()))}
                                           for kind, batch in batches.items()}}) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"x2vlm-pretrain: {error}", file=sys.stderr)
        return 2
    trainer = None
    try:
        try:
            trainer = Trainer(config, args.resume)
        except (ValueError, FileNotFoundError) as error:
            # Config, data spec, shard list and model config problems, all found before step 1.
            print(f"x2vlm-pretrain: {error}", file=sys.stderr)
            return 2
        return trainer.run()
    except NonFiniteLossError as error:
        print(f"x2vlm-pretrain: {error}", file=sys.stderr)
        return NONFINITE_EXIT_CODE
    finally:
        if trainer is not None:
            trainer.close()


if __name__ == "__main__":
    sys.exit(main())
