from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from microgpt.common.errors import MicrogptError
from microgpt.data import Manifest, TokenLoader
from microgpt.data.shards import open_shard


def all_tokens(out: Path, manifest: Manifest, split: str) -> np.ndarray:
    return np.concatenate([np.asarray(open_shard(p)) for p in manifest.shard_paths(out, split)])  # type: ignore[arg-type]


def rows(batch: tuple[torch.Tensor, torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(row) for row in batch[0].tolist()]


def test_batches_are_shifted_windows_of_the_split(prepared: tuple[Path, Manifest]) -> None:
    out, manifest = prepared
    tokens = all_tokens(out, manifest, "train")
    loader = TokenLoader(out, "train", batch_size=4, block_size=50, shuffle=False, prefetch=0)
    assert len(manifest.split("train").shards) > 3  # windows cross shard ends (shards hold 997 tokens)
    for b in range(loader.batches_per_epoch):
        x, y = next(loader)
        assert x.shape == y.shape == (4, 50) and x.dtype == y.dtype == torch.int64
        for r in range(4):
            start = (b * 4 + r) * 50
            assert x[r].tolist() == tokens[start : start + 50].tolist()
            assert y[r].tolist() == tokens[start + 1 : start + 51].tolist()
    assert loader.state_dict()["epoch"] == 1


def test_two_ranks_are_disjoint_and_cover_the_epoch(prepared: tuple[Path, Manifest]) -> None:
    out, _ = prepared
    T = 32
    seen: list[set[tuple[int, ...]]] = []
    counts = []
    for rank in range(2):
        loader = TokenLoader(out, "train", batch_size=3, block_size=T, rank=rank, world_size=2, seed=5)
        counts.append(loader.batches_per_epoch)
        seen.append({row for _ in range(loader.batches_per_epoch) for row in rows(next(loader))})
    single = TokenLoader(out, "train", batch_size=1, block_size=T, shuffle=False, prefetch=0)
    every = {row for _ in range(single.batches_per_epoch) for row in rows(next(single))}
    assert counts[0] == counts[1] > 0
    assert not seen[0] & seen[1]
    used = counts[0] * 3 * 2  # windows dealt out in one epoch (the remainder past whole batches is dropped)
    assert len(seen[0]) + len(seen[1]) == used and seen[0] | seen[1] <= every
    assert len(every) - used < 2 * 3 * 2  # at most one batch per rank dropped
    # evaluation covers every window exactly once across ranks, same batch count on each rank
    evals = [list(TokenLoader(out, "train", 4, T, rank=r, world_size=2).eval_batches()) for r in range(2)]
    assert len(evals[0]) == len(evals[1])
    eval_rows = [row for batches in evals for batch in batches for row in rows(batch)]
    assert len(eval_rows) == len(set(eval_rows)) and set(eval_rows) <= every
    assert len(eval_rows) == len(every) - len(every) % 2


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_continues_with_the_exact_next_batch(prepared: tuple[Path, Manifest], prefetch: int) -> None:
    out, _ = prepared

    def make() -> TokenLoader:
        return TokenLoader(out, "train", batch_size=5, block_size=16, seed=3, prefetch=prefetch)

    uninterrupted = make()
    per_epoch = uninterrupted.batches_per_epoch
    stop = per_epoch + 2  # across an epoch boundary, into a reshuffled epoch
    reference = [next(uninterrupted) for _ in range(stop + 6)]
    first = make()
    for _ in range(stop):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # JSON-able, as saved in checkpoints
    first.close()
    resumed = make()
    resumed.load_state_dict(state)
    for expected in reference[stop:]:
        x, y = next(resumed)
        assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])
    assert state["epoch"] == 1 and state["batch"] == 2
    assert rows(reference[0]) != rows(reference[per_epoch])  # each epoch has its own order


def test_prefetch_and_no_prefetch_give_the_same_stream(prepared: tuple[Path, Manifest]) -> None:
    out, _ = prepared
    a = TokenLoader(out, "val", batch_size=2, block_size=8, seed=1, prefetch=0)
    b = TokenLoader(out, "val", batch_size=2, block_size=8, seed=1, prefetch=4)
    for _ in range(2 * a.batches_per_epoch + 1):
        assert rows(next(a)) == rows(next(b))
    b.close()


def test_bad_setups_are_clear_errors(prepared: tuple[Path, Manifest], tmp_path: Path) -> None:
    out, _ = prepared
    with pytest.raises(MicrogptError, match="no manifest.json"):
        TokenLoader(tmp_path, "train", 2, 8)
    with pytest.raises(MicrogptError, match="too few for one window"):
        TokenLoader(out, "test", 2, 8)
    with pytest.raises(MicrogptError, match="too few for one window"):
        TokenLoader(out, "val", 2, 100_000)
    loader = TokenLoader(out, "train", 2, 8)
    state = loader.state_dict() | {"batch_size": 3}
    with pytest.raises(MicrogptError, match="saved batch_size=3, now 2"):
        loader.load_state_dict(state)
    shard = out / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(MicrogptError, match="truncated"):
        TokenLoader(out, "train", 2, 8)


def test_an_error_in_the_prefetch_thread_reaches_the_caller(
    prepared: tuple[Path, Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = prepared
    loader = TokenLoader(out, "train", 2, 8, prefetch=2)
    next(loader)
    loader.close()

    def broken(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        raise OSError("disk went away")

    monkeypatch.setattr(loader, "_assemble", broken)
    with pytest.raises(OSError, match="disk went away"):
        next(loader)  # raised, not a hang
    assert loader.state_dict()["batch"] == 1
