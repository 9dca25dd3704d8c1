"""Where the engine's steps spend their time, host and device.

step_census: every step of a run by kind (decode only, prefill only, mixed, empty), each
kind's count, tokens and wall time, and the time outside steps (submitting the requests).

traced_generate: a torch.profiler trace of the window, read back three ways:
- host phases: each phase's time a step (inclusive), on the engine thread;
- device idle: the time no kernel or copy runs, split by the host phase that queued the work
  ending each idle gap (the phase the device was waiting for), or "queued before" when that
  work was already queued (the device waited on something else);
- syncs: the engine thread's time blocked in CUDA synchronize calls, by phase.

The phases are the engine's methods, wrapped for the traced run only (record_function ranges).
The profiler adds a few microseconds of host time to every torch op, so read the host phases
relative to each other and the idle split as where the device waits, not as exact step times.

    from step_timeline import step_census, traced_generate
    print(step_census(engine, prompts, params))
    print(traced_generate(engine, prompts, params, first_step=60, num_steps=40))
"""

import collections
import contextlib
import functools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

# (object path from the engine, method, phase label); "" is the engine itself
ENGINE_PHASES = [
    ("", "step", "step"),
    ("", "_admit_compiled", "admit_compiled"),
    ("", "_run", "run"),
    ("", "_launch", "launch_constrained"),
    ("", "_outputs", "outputs"),
    ("scheduler", "schedule", "schedule"),
    ("updater", "update", "update"),
    ("updater", "drain", "drain"),
    ("updater", "pending_inputs", "pending_inputs"),
    ("updater", "_apply_launched", "apply_launched"),
    ("updater", "_resolve", "resolve"),
    ("updater", "_advance_grammars", "advance_grammars"),
    ("updater", "_apply_resolved", "apply_resolved"),
    ("grammars", "step_mask", "step_mask"),
    ("structured", "fill_in_background", "fill_handoff"),
    ("runner", "logits", "forward"),
    ("runner", "launch", "launch"),
    ("runner", "launch_sampling", "sampling"),
    ("runner", "execute", "execute"),
]
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
SYNC_CALLS = ("cudaEventSynchronize", "cudaStreamSynchronize", "cudaDeviceSynchronize")
MIN_GAP_US = 2.0  # launch-to-launch spacing of back-to-back kernels is not waiting


def step_census(engine: Any, prompts: list[Any], params: Any) -> str:
    """Run `engine.generate(prompts, params)` timing each step by its plan's kind."""
    schedule, step = engine.scheduler.schedule, engine.step
    plans: list[Any] = []
    walls: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
    tokens: collections.Counter[str] = collections.Counter()

    def planned(*args: Any, **kwargs: Any) -> Any:
        plans.append(schedule(*args, **kwargs))
        return plans[-1]

    def timed() -> Any:
        began = time.perf_counter()
        try:
            return step()
        finally:
            kind = _kind(plans[-1]) if plans else "empty"
            walls[kind].append(time.perf_counter() - began)
            tokens[kind] += plans[-1].num_batched_tokens if plans else 0
            plans.clear()

    engine.scheduler.schedule, engine.step = planned, timed
    began = time.perf_counter()
    try:
        engine.generate(prompts, params)
    finally:
        del engine.scheduler.schedule, engine.step
    total = time.perf_counter() - began
    in_steps = sum(map(sum, walls.values()))
    lines = [f"{sum(map(len, walls.values()))} steps, {total:.3f} s; outside steps "
             f"{total - in_steps:.3f} s. By kind: steps, tokens, s, ms a step:"]  # fmt: skip
    for kind, times in sorted(walls.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"  {kind:8s} {len(times):6d} {tokens[kind]:9d} {sum(times):8.3f} "
                     f"{1e3 * sum(times) / len(times):8.3f}")  # fmt: skip
    return "\n".join(lines)


def _kind(plan: Any) -> str:
    if plan.is_empty:
        return "empty"
    if plan.is_pure_decode:
        return "decode"
    return "mixed" if any(item.samples and item.num_new_tokens == 1 + item.num_spec
                          for item in plan.scheduled) else "prefill"  # fmt: skip


def traced_generate(
    engine: Any,
    prompts: list[Any],
    params: Any,
    first_step: int,
    num_steps: int,
    trace_path: Path | None = None,
) -> str:
    """Run `engine.generate(prompts, params)` with steps first_step to first_step + num_steps
    traced; the report as text. `trace_path`: keep the chrome trace there."""
    with tempfile.TemporaryDirectory() as scratch:
        path = trace_path or Path(scratch) / "trace.json"
        with _annotated(engine), _window(engine, first_step, num_steps, path):
            engine.generate(prompts, params)
        if not path.exists():
            return f"the run ended before step {first_step + num_steps}: nothing traced"
        return report(json.loads(path.read_text()))


@contextlib.contextmanager
def _annotated(engine: Any) -> Iterator[None]:
    from llm_worker.engine.model_runner import AsyncTokens
    from llm_worker.engine.step_mask import StepMask

    undo: list[Callable[[], None]] = []
    for owner_path, method, label in ENGINE_PHASES:
        owner = engine
        for part in filter(None, owner_path.split(".")):
            owner = getattr(owner, part, None)
        if owner is not None and hasattr(owner, method):
            setattr(owner, method, _ranged(getattr(owner, method), label))
            undo.append(functools.partial(delattr, owner, method))
    for cls, method, label in (
        (AsyncTokens, "tolist", "tokens_wait"),
        (StepMask, "apply_", "mask_apply"),
        (StepMask, "_apply_rows", "mask_copy_kernel"),
    ):
        original = cls.__dict__[method]
        setattr(cls, method, _ranged(original, label))
        undo.append(functools.partial(setattr, cls, method, original))
    try:
        yield
    finally:
        for restore in reversed(undo):
            restore()


def _ranged(call: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(call)
    def ranged(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(label):
            return call(*args, **kwargs)

    return ranged


@contextlib.contextmanager
def _window(engine: Any, first_step: int, num_steps: int, path: Path) -> Iterator[None]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    step = engine.step  # the annotated one
    count = 0
    tracing = False

    def windowed() -> Any:
        nonlocal count, tracing
        if count == first_step:
            profiler.start()
            tracing = True
        count += 1
        try:
            return step()
        finally:
            if tracing and count == first_step + num_steps:
                _stop(profiler, path)
                tracing = False

    engine.step = windowed
    try:
        yield
    finally:
        engine.step = step
        if tracing:
            _stop(profiler, path)


def _stop(profiler: Any, path: Path) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    profiler.stop()
    profiler.export_chrome_trace(str(path))


def report(trace: dict[str, Any]) -> str:
    """The three readings of a chrome trace of annotated steps, as text."""
    spans = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    steps = [e for e in spans if e.get("cat") == "user_annotation" and e["name"] == "step"]
    if not steps:
        return "no step in the trace"
    engine_tid = collections.Counter(e["tid"] for e in steps).most_common(1)[0][0]
    phases = sorted(
        (e for e in spans if e.get("cat") == "user_annotation" and e["tid"] == engine_tid),
        key=lambda e: e["ts"],
    )
    start = min(e["ts"] for e in steps)
    end = max(e["ts"] + e["dur"] for e in steps)
    num_steps = len(steps)
    lines = [f"{num_steps} steps, {(end - start) / 1e3 / num_steps:.3f} ms a step (wall, traced)"]
    lines += _host_phases(phases, num_steps)
    gpu = sorted((e for e in spans if e.get("cat") in GPU_CATEGORIES), key=lambda e: e["ts"])
    runtime = {
        e["args"]["correlation"]: e
        for e in spans
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
    }
    if gpu:
        lines += _device_idle(gpu, runtime, phases, start, end, num_steps)
    syncs = [e for e in runtime.values() if e["name"] in SYNC_CALLS and e["tid"] == engine_tid]
    if syncs:
        lines.append("engine thread blocked in CUDA syncs, ms a step, by phase:")
        lines += _by_phase(((s["ts"], s["dur"]) for s in syncs), phases, num_steps)
    return "\n".join(lines)


def _host_phases(phases: list[dict[str, Any]], num_steps: int) -> list[str]:
    total: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for e in phases:
        total[e["name"]] += e["dur"]
        calls[e["name"]] += 1
    lines = ["host phases (engine thread, inclusive), ms a step / calls a step:"]
    for name, dur in total.most_common():
        lines.append(f"  {name:20s} {dur / 1e3 / num_steps:8.3f}  {calls[name] / num_steps:6.2f}")
    return lines


def _device_idle(
    gpu: list[dict[str, Any]],
    runtime: dict[int, dict[str, Any]],
    phases: list[dict[str, Any]],
    start: float,
    end: float,
    num_steps: int,
) -> list[str]:
    busy_until = start
    busy = 0.0
    gaps: list[tuple[float, float]] = []  # (launch time of the work ending the gap, length)
    for e in gpu:
        begin, finish = max(e["ts"], start), min(e["ts"] + e["dur"], end)
        if finish <= begin:
            continue
        if begin - busy_until > MIN_GAP_US:
            launch = runtime.get(e.get("args", {}).get("correlation", -1))
            queued = launch["ts"] if launch is not None else float("-inf")
            gaps.append((queued if queued > busy_until else float("-inf"), begin - busy_until))
        busy += max(0.0, finish - max(begin, busy_until))
        busy_until = max(busy_until, finish)
    if end - busy_until > MIN_GAP_US:
        gaps.append((float("-inf"), end - busy_until))
    window = end - start
    idle_ms = (window - busy) / 1e3 / num_steps
    lines = [
        f"device busy {busy / window:.1%} of the window; idle {idle_ms:.3f} ms a step, by the"
        " host phase that queued the work ending each gap:"
    ]
    lines += _by_phase(gaps, phases, num_steps)
    return lines


def _by_phase(at: Any, phases: list[dict[str, Any]], num_steps: int) -> list[str]:
    """Sum durations by the innermost phase open at each time (-inf: queued before)."""
    total: collections.Counter[str] = collections.Counter()
    for ts, dur in at:
        total[_innermost(phases, ts)] += dur
    return [f"  {name:28s} {dur / 1e3 / num_steps:8.3f}" for name, dur in total.most_common()]


def _innermost(phases: list[dict[str, Any]], ts: float) -> str:
    if ts == float("-inf"):
        return "(queued before the gap)"
    open_ = [e for e in phases if e["ts"] <= ts <= e["ts"] + e["dur"]]
    if not open_:
        return "(between steps)"
    path = sorted(open_, key=lambda e: e["ts"])
    return "/".join(e["name"] for e in path[-2:]) if len(path) > 1 else path[0]["name"]
