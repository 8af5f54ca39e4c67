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
    assert state["epoch"] == 1 and state["window"] == 2 * 5
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
    state = loader.state_dict() | {"global_batch": 3}
    with pytest.raises(MicrogptError, match="saved global_batch=3, now 2"):
        loader.load_state_dict(state)
    with pytest.raises(MicrogptError, match="older microgpt whose data order depended on the number of processes"):
        loader.load_state_dict({"version": 1, "epoch": 0, "batch": 3, "world_size": 1})
    with pytest.raises(MicrogptError, match="not a multiple of batch_size × world_size = 4"):
        TokenLoader(out, "train", 2, 8, rank=1, world_size=2, global_batch=6)
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
    assert loader.state_dict()["window"] == 2


def _step_windows(loader: TokenLoader, grad_accum: int) -> list[set[tuple[int, ...]]]:
    return [{row for _ in range(grad_accum) for row in rows(next(loader))} for _ in range(loader.batches_per_epoch)]


@pytest.mark.parametrize(("world_size", "micro"), [(2, 6), (3, 2), (4, 1)])
def test_steps_see_the_same_windows_at_any_world_size(
    prepared: tuple[Path, Manifest], world_size: int, micro: int
) -> None:
    # One global order: optimizer step s trains on the same 12 windows whether one rank takes them in one batch
    # or several ranks split them into micro-steps; the epoch is cut at the same place, and epoch 2 reshuffles.
    out, _ = prepared
    G, T = 12, 16
    single = TokenLoader(out, "train", G, T, seed=9, global_batch=G)
    reference = [rows(next(single)) for _ in range(single.batches_per_epoch + 2)]
    accum = G // (micro * world_size)
    loaders = [
        TokenLoader(out, "train", micro, T, rank=r, world_size=world_size, seed=9, global_batch=G)
        for r in range(world_size)
    ]
    steps = single.batches_per_epoch + 2
    got: list[list[tuple[int, ...]]] = [[] for _ in range(steps)]
    for step in range(steps):
        for _ in range(accum):
            for loader in loaders:
                got[step] += rows(next(loader))
    assert [sorted(s) for s in got] == [sorted(s) for s in reference]
    assert len(set(got[0])) == G and set(got[0]) != set(got[single.batches_per_epoch])


def test_a_state_saved_on_two_ranks_resumes_on_one_and_back(prepared: tuple[Path, Manifest]) -> None:
    out, _ = prepared
    G, T = 8, 16
    one = TokenLoader(out, "train", G, T, seed=4, global_batch=G)
    reference = [sorted(rows(next(one))) for _ in range(one.batches_per_epoch + 3)]
    two = [TokenLoader(out, "train", 4, T, rank=r, world_size=2, seed=4, global_batch=G) for r in range(2)]
    stop = one.batches_per_epoch - 1  # the resumed loader crosses the epoch boundary
    for _ in range(stop):
        for loader in two:
            next(loader)
    state = json.loads(json.dumps(two[0].state_dict()))
    assert state == two[1].state_dict()  # the same on every rank
    resumed = TokenLoader(out, "train", 2, T, seed=4, global_batch=G)  # one rank, two micro-steps of 2 windows
    resumed.load_state_dict(state)
    for expected in reference[stop : stop + 3]:
        assert sorted(rows(next(resumed)) + rows(next(resumed)) + rows(next(resumed)) + rows(next(resumed))) == expected
    back = [TokenLoader(out, "train", 4, T, rank=r, world_size=2, seed=4, global_batch=G) for r in range(2)]
    for loader in back:
        loader.load_state_dict(resumed.state_dict())
    assert sorted(rows(next(back[0])) + rows(next(back[1]))) == reference[stop + 3]
    odd = TokenLoader(out, "train", 3, T, seed=4, global_batch=9)
    with pytest.raises(MicrogptError, match="saved global_batch=8, now 9"):
        odd.load_state_dict(state)
