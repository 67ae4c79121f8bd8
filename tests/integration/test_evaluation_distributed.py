"""Evaluation over 2 gloo ranks: the ITM re-ranking shared out by query gives what one process
gives, every rank makes the same forward calls, and every rank reports the same metrics."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data_pipeline.spec import DataSpec
from pipeline_helpers import coco_samples, demo_tokenizer, write_shards  # noqa: F401  (fixture)
from training.evaluation import evaluate
from training.evaluation.eval_sets import eval_data_spec
from training.evaluation.evaluator import itm_rerank
from training.model import create_model

WORLD = 2


def _similarity() -> torch.Tensor:
    return torch.arange(5 * 6, dtype=torch.float).reshape(5, 6).remainder(7) / 10


def _pair_scores(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    return (queries * 7 + candidates).float() / 100


def _rank_main(rank: int, port: int, spec: DataSpec, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    calls = []

    def counted(queries, candidates):
        calls.append(len(queries))
        return _pair_scores(queries, candidates)

    reranked = itm_rerank(_similarity(), 3, counted, pair_batch=4, device=torch.device("cpu"))
    torch.manual_seed(0)
    metrics = evaluate(create_model("tiny", load_pretrained=False), spec, itm_top_k=5, max_samples=9)
    torch.save({"reranked": reranked, "calls": calls, "metrics": metrics}, Path(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_ranks_report_what_one_process_reports(demo_corpus, demo_tokenizer, tmp_path):
    write_shards(coco_samples(demo_corpus, "eval"), tmp_path / "image", "coco", 2)
    spec = eval_data_spec(str(demo_tokenizer), 64, 16, [("image", "image_text", [f"{tmp_path}/image/*.tar"])],
                          batch_size=4, max_tokens=24)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: a child forked from a process whose OpenMP pool has run can hang.
    mp.spawn(_rank_main, args=(port, spec, str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    single = itm_rerank(_similarity(), 3, _pair_scores, 4, torch.device("cpu"))
    torch.manual_seed(0)
    metrics = evaluate(create_model("tiny", load_pretrained=False), spec, itm_top_k=5, max_samples=9)
    for result in results:
        assert torch.allclose(result["reranked"], single)
        assert result["metrics"] == pytest.approx(metrics)
    # 5 queries in shares of 3 (rank 1's last one padded): both ranks make the same calls.
    assert results[0]["calls"] == results[1]["calls"] == [4, 4, 1]
