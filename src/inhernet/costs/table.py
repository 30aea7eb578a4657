"""Measured layer costs: how long a dense layer and its factorised form take on this device.

A :class:`CostTable` times, once per :class:`LayerShape` and thread count, the dense layer and its
single-expert block at a few ranks (:func:`rank_points`; medians of interleaved repetitions, so that
a slow stretch of a shared machine hits every form alike), interpolating in rank between them. It is
cached as JSON in :func:`cost_dir`; a cached table re-times the first shape asked for and, outside
:data:`DRIFT_BAND`, scales every cached price by live / cached with a warning, since a latency budget
compares them with the teacher's time measured now. Anything with the methods of :class:`Costs` can
stand in for a table; :class:`LatencyCosts` adds whole models (:func:`measure_latency`, not cached).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .._atomic import atomic_write
from ..batches import device_of, evaluating, forward_batch, move_batch
from ..kinds import kind_of
from ..layers import InherConv, InherEmbedding, InherLinear

__all__ = ["CostTable", "Costs", "LatencyCosts", "LayerShape", "cost_dir", "device_name", "measure_latency", "rank_points"]

CACHE_VERSION = 1
#: live / cached time of a re-timed cached shape inside this band counts as noise (no rescaling)
DRIFT_BAND = (0.8, 1.25)


@dataclass(frozen=True)
class LayerShape:
    """What a layer's timing depends on: its kind and geometry, and the input it is called with.

    ``kind``: ``"linear"``, ``"conv1d"``, ``"conv2d"`` or ``"embedding"``; ``out_features`` and
    ``in_features``: the output and input channels (an embedding's dim and vocabulary); the conv
    geometry is ``()`` for the others; ``dtype``: the input's (an embedding's table's).
    """

    kind: str
    out_features: int
    in_features: int
    bias: bool
    input_shape: tuple[int, ...]
    dtype: str
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()

    @property
    def full_rank(self) -> int:
        """The largest meaningful rank: ``min(m, n)`` of the layer's matrix."""
        n = self.in_features * math.prod(self.kernel_size) if self.kernel_size else self.in_features
        return min(self.out_features, n)

    def key(self) -> str:
        """A stable string that identifies the shape in the JSON cache."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def of_layer(cls, module: nn.Module, x: torch.Tensor) -> LayerShape:
        """The shape of ``module`` called on ``x``: a dense teacher layer, or the block that replaced it
        (it answers the layer's attributes), so that a plan prices what ``compact`` times.

        Hugging Face ``Conv1D`` is timed as the ``nn.Linear`` of the same geometry.
        """
        dtype = str(x.dtype).removeprefix("torch.")
        shape = tuple(int(s) for s in x.shape)
        bias = getattr(module, "bias", None) is not None
        if isinstance(module, (nn.Embedding, InherEmbedding)):  # the input is token ids: the table's dtype
            table = str(module.weight.dtype).removeprefix("torch.")
            return cls("embedding", module.embedding_dim, module.num_embeddings, False, shape, table)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, InherConv)):
            kernel, stride, dilation = tuple(module.kernel_size), tuple(module.stride), tuple(module.dilation)
            return cls(f"conv{len(kernel)}d", module.out_channels, module.in_channels, bias, shape, dtype,
                       kernel, stride, _ints(module.padding), dilation)
        if isinstance(module, (nn.Linear, InherLinear)):
            return cls("linear", module.out_features, module.in_features, bias, shape, dtype)
        kind = kind_of(module)
        if kind is not None and kind.name == "hf_conv1d":
            n, m = module.weight.shape
            return cls("linear", int(m), int(n), bias, shape, dtype)
        raise TypeError(f"no cost model for a {type(module).__name__}")

    def dense_module(self, device: torch.device | str = "cpu") -> nn.Module:
        """A dense layer of this shape (random weights: timing does not depend on the values)."""
        dtype = getattr(torch, self.dtype)
        if self.kind == "linear":
            return nn.Linear(self.in_features, self.out_features, bias=self.bias, device=device, dtype=dtype)
        if self.kind == "embedding":
            return nn.Embedding(self.in_features, self.out_features, device=device, dtype=dtype)
        if self.kind in ("conv1d", "conv2d"):
            conv = nn.Conv1d if self.kind == "conv1d" else nn.Conv2d
            padding: Any = "same" if self.padding == (-1,) else self.padding
            return conv(
                self.in_features, self.out_features, self.kernel_size, stride=self.stride, padding=padding,
                dilation=self.dilation, bias=self.bias, device=device, dtype=dtype,
            )
        raise ValueError(f"LayerShape.kind must be linear, conv1d, conv2d or embedding, got {self.kind!r}")

    def example(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """A random input of ``input_shape`` (token ids below the vocabulary for an embedding)."""
        if self.kind == "embedding":
            return torch.randint(0, self.in_features, self.input_shape, device=device)
        return torch.randn(self.input_shape, device=device, dtype=getattr(torch, self.dtype))


def _ints(padding: Any) -> tuple[int, ...]:
    """A conv's padding as ints; ``"same"``/``"valid"`` as ``(-1,)``/``(0,)`` (the cost is what matters)."""
    if isinstance(padding, str):
        return (-1,) if padding == "same" else (0,)
    return tuple(int(p) for p in padding)


@runtime_checkable
class Costs(Protocol):
    """Seconds per call of a layer, dense and factorised at a rank (single expert)."""

    def dense(self, shape: LayerShape) -> float: ...

    def factorised(self, shape: LayerShape, rank: int) -> float: ...


@runtime_checkable
class LatencyCosts(Costs, Protocol):
    """:class:`Costs` that also time whole models, as a latency budget needs."""

    def latency(self, models: Sequence[nn.Module], example: Any) -> list[float]:
        """Seconds per forward pass of each of ``models`` on the batch ``example``, measured together."""
        ...


def device_name(device: torch.device | str = "cpu") -> str:
    """A file-name-safe name of the device: the GPU's name, or the CPU's model (``/proc/cpuinfo``)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = "cuda-" + torch.cuda.get_device_name(device)
    else:
        name = f"{device.type}-{platform.machine() or 'unknown'}"
        with contextlib.suppress(OSError):
            lines = Path("/proc/cpuinfo").read_text().splitlines()
            models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
            name += f"-{models[0]}" if models else ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:100]


def cost_dir() -> Path:
    """Where cost tables are cached: ``$INHERNET_HOME/costs`` or ``~/.cache/inhernet/costs``."""
    home = os.environ.get("INHERNET_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "inhernet") / "costs"


def rank_points(full_rank: int, count: int = 4) -> list[int]:
    """``count`` ranks from 1 to ``full_rank``, evenly spaced (multiples of 8 where wide enough), to time."""
    if full_rank < 1:
        raise ValueError(f"full_rank must be >= 1, got {full_rank}")
    points = {1, full_rank}
    for i in range(1, count - 1):
        r = round(full_rank * i / (count - 1))
        if full_rank >= 32:
            r = max(8, r // 8 * 8)
        points.add(max(1, min(full_rank, r)))
    return sorted(points)


class CostTable:
    """Measured seconds per call, by layer shape, on one device at one thread count; cached as JSON.

    Args:
        device: where layers are timed (default CPU).
        threads: the torch thread count the table is for and timed under (default: the current one).
        path: the JSON cache (default ``cost_dir() / f"{device_name(device)}-{threads}.json"``).
        cache: read and write the JSON cache.
        repeats: interleaved repetitions per measurement (the median is kept).
        min_time: seconds each timed sample lasts at least (a sample repeats the call as needed).
        points: how many ranks are timed per shape (see :func:`rank_points`).
        check_drift: re-time the first cached shape asked for (see the module's docstring).
    """

    def __init__(
        self, device: torch.device | str = "cpu", *, threads: int | None = None,
        path: str | os.PathLike[str] | None = None, cache: bool = True, repeats: int = 7, min_time: float = 2e-3,
        points: int = 4, check_drift: bool = True,
    ) -> None:
        if repeats < 1 or points < 2 or min_time <= 0:
            raise ValueError(f"need repeats >= 1, points >= 2 and min_time > 0, got {repeats}, {points}, {min_time}")
        self.device = torch.device(device)
        self.threads = int(threads) if threads is not None else torch.get_num_threads()
        self.path: Path | None = None
        if cache:
            self.path = Path(path) if path is not None else cost_dir() / f"{device_name(self.device)}-{self.threads}.json"
        self.repeats, self.min_time, self.points = repeats, min_time, points
        self.entries: dict[str, dict[str, Any]] = {} if self.path is None else _read_cache(self.path)
        self._from_cache = set(self.entries)
        #: live / cached time of the cached prices, once re-timed (1.0 without ``check_drift``)
        self.drift: float | None = None if check_drift else 1.0

    def dense(self, shape: LayerShape) -> float:
        return float(self._entry(shape)["dense"]) * self._scale(shape)

    def factorised(self, shape: LayerShape, rank: int) -> float:
        """Seconds at ``rank``: linear between the two nearest timed ranks (beyond them, the end segment)."""
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        pts = sorted((int(r), float(s)) for r, s in self._entry(shape)["ranks"])
        if len(pts) == 1:
            return pts[0][1] * self._scale(shape)
        i = next((k for k in range(1, len(pts)) if rank <= pts[k][0]), len(pts) - 1)
        (r0, s0), (r1, s1) = pts[i - 1], pts[i]
        return max(0.0, s0 + (s1 - s0) * (rank - r0) / (r1 - r0)) * self._scale(shape)

    def latency(self, models: Sequence[nn.Module], example: Any) -> list[float]:
        """:func:`measure_latency` on this table's device and threads, with at least 11 repetitions of at
        least 20 ms. Not cached."""
        return measure_latency(
            models, example, repeats=max(self.repeats, 11), min_time=max(self.min_time, 0.02),
            device=self.device, threads=self.threads,
        )

    def _scale(self, shape: LayerShape) -> float:
        """What ``shape``'s stored times are multiplied by: :attr:`drift` for a cached entry, else 1."""
        if shape.key() not in self._from_cache:
            return 1.0
        if self.drift is None:
            self.drift = self._retime(shape)
        return self.drift

    def _retime(self, shape: LayerShape) -> float:
        """live / cached time of the cached ``shape`` (1.0 inside :data:`DRIFT_BAND`, else a warning)."""
        cached = float(self.entries[shape.key()]["dense"])
        x = shape.example(self.device)
        dense = shape.dense_module(self.device).eval()
        repeats, min_time = max(self.repeats, 5), max(self.min_time, 1e-3)
        live = time_calls([functools.partial(dense, x)], repeats, min_time, self.device, self.threads)[0]
        ratio = live / cached if cached > 0 and live > 0 else 1.0
        if DRIFT_BAND[0] <= ratio <= DRIFT_BAND[1]:
            return 1.0
        warnings.warn(
            f"this machine runs the layers of the cost table {self.path} {max(ratio, 1 / ratio):.2f}x "
            f"{'slower' if ratio > 1 else 'faster'} now than when they were cached (another process on the "
            "cores, or a changed clock): its cached prices are scaled by that ratio for this run; run latency "
            "work on an otherwise idle machine, or delete the file to measure again",
            stacklevel=4,
        )
        return ratio

    def _entry(self, shape: LayerShape) -> dict[str, Any]:
        key = shape.key()
        if key not in self.entries:
            self.entries[key] = self.measure(shape)
            self.save()
        return self.entries[key]

    def measure(self, shape: LayerShape) -> dict[str, Any]:
        """Time the dense layer and the factorised form at :func:`rank_points` (no cache involved)."""
        ranks = rank_points(shape.full_rank, self.points)
        dense = shape.dense_module(self.device).eval()
        kind = kind_of(dense)
        assert kind is not None
        forms: list[nn.Module] = [dense] + [kind.build(dense, r, 1).eval() for r in ranks]
        x = shape.example(self.device)
        calls = [functools.partial(f, x) for f in forms]
        seconds = time_calls(calls, self.repeats, self.min_time, self.device, self.threads)
        return {"dense": seconds[0], "ranks": [[r, s] for r, s in zip(ranks, seconds[1:], strict=True)]}

    def save(self) -> Path | None:
        """Write the table to its JSON cache (atomically); returns the path, ``None`` without a cache."""
        if self.path is None:
            return None
        body = {"version": CACHE_VERSION, "device": device_name(self.device), "threads": self.threads,
                "torch": torch.__version__, "entries": self.entries}
        return atomic_write(self.path, json.dumps(body, indent=1, sort_keys=True) + "\n")


def _seconds(call: Callable[[], Any], n: int, device: torch.device) -> float:
    """Seconds of ``n`` calls of ``call``, the device's queued work finished before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


@torch.no_grad()
def time_calls(
    calls: list[Callable[[], Any]], repeats: int = 7, min_time: float = 2e-3,
    device: torch.device | str = "cpu", threads: int | None = None,
) -> list[float]:
    """Median seconds per call of each of ``calls``, timed in interleaved rounds.

    Each call is warmed up, then repeated in every sample often enough for the sample to last about
    ``min_time``; the rounds alternate between the calls.
    """
    device = torch.device(device)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        inner = []
        for call in calls:
            call()  # warm-up
            inner.append(max(1, math.ceil(min_time / max(_seconds(call, 1, device), 1e-7))))
        samples: list[list[float]] = [[] for _ in calls]
        for _ in range(repeats):
            for call, n, out in zip(calls, inner, samples, strict=True):
                out.append(_seconds(call, n, device) / n)
        return [statistics.median(s) for s in samples]
    finally:
        torch.set_num_threads(before)


def measure_latency(
    models: Sequence[nn.Module], example: Any, *, repeats: int = 11, min_time: float = 0.02,
    device: torch.device | str | None = None, threads: int | None = None,
) -> list[float]:
    """Median seconds per forward pass of each of ``models`` on the batch ``example``, timed in
    interleaved rounds (:func:`time_calls`) in eval mode without grad. ``device``: where the models
    are (default: the first one's)."""
    if not models:
        return []
    device = device_of(models[0]) if device is None else device
    batch = move_batch(example, device)
    with contextlib.ExitStack() as modes:
        for model in models:
            modes.enter_context(evaluating(model))
        calls = [functools.partial(forward_batch, model, batch) for model in models]
        return time_calls(calls, repeats, min_time, device, threads)


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of a cache file; a missing, unreadable or outdated file is ignored (it is re-measured)."""
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(body, dict) or body.get("version") != CACHE_VERSION or not isinstance(body.get("entries"), dict):
        return {}
    return {
        key: e for key, e in body["entries"].items()
        if isinstance(e, dict) and isinstance(e.get("dense"), (int, float))
        and isinstance(e.get("ranks"), list) and e["ranks"]
        and all(isinstance(p, list) and len(p) == 2 for p in e["ranks"])
    }
