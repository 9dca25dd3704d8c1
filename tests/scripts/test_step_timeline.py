"""scripts/dev/step_timeline.py: its reading of a chrome trace, on a hand-built one whose device
idle time and host phases are known, and a traced run of the engine on the CPU."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from llm_worker.schemas import SamplingParams
from tests.oracle import engine_for, make_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_timeline():
    spec = importlib.util.spec_from_file_location(
        "step_timeline", REPO_ROOT / "scripts" / "dev" / "step_timeline.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("step_timeline", module)
    spec.loader.exec_module(module)
    return module


timeline = _load_timeline()
ENGINE, FILL = 1, 2


def span(name, cat, ts, dur, tid=ENGINE, correlation=None):
    event = {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "tid": tid}
    if correlation is not None:
        event["args"] = {"correlation": correlation}
    return event


def two_steps():
    """Two 100 us steps. One: schedule 0-10, the forward launched at 12 (kernel 20-60), a
    drain 30-90 blocked in a sync 30-60, the sampling launched at 92 (kernel 95-100). Two:
    the forward launched at 104 (kernel 105-150), the sampling's kernel launched at 140 but
    running 170-200."""
    return {"traceEvents": [
        span("step", "user_annotation", 0, 100),
        span("schedule", "user_annotation", 0, 10),
        span("forward", "user_annotation", 11, 4),
        span("cudaGraphLaunch", "cuda_runtime", 12, 2, correlation=1),
        span("kernel_a", "kernel", 20, 40, tid=7, correlation=1),
        span("drain", "user_annotation", 30, 60),
        span("cudaEventSynchronize", "cuda_runtime", 30, 30, correlation=2),
        span("sampling", "user_annotation", 91, 5),
        span("cudaLaunchKernel", "cuda_runtime", 92, 1, correlation=3),
        span("kernel_b", "kernel", 95, 5, tid=7, correlation=3),
        span("step", "user_annotation", 100, 100),
        span("forward", "user_annotation", 101, 6),
        span("cudaGraphLaunch", "cuda_runtime", 104, 1, correlation=4),
        span("kernel_c", "kernel", 105, 45, tid=7, correlation=4),
        span("sampling", "user_annotation", 155, 10),
        span("cudaLaunchKernel", "cuda_runtime", 140, 1, correlation=5),
        span("kernel_d", "kernel", 170, 30, tid=7, correlation=5),
        span("fill", "user_annotation", 0, 200, tid=FILL),  # another thread: not a phase
    ]}


def figures(text: str, heading: str) -> dict[str, float]:
    """The `name  value` lines under the line starting with `heading`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    found = {}
    for line in lines[start + 1 :]:
        match = re.fullmatch(r"  (\S.*?)\s+([\d.]+)(?:\s+[\d.]+)?", line)
        if match is None:
            break
        found[match.group(1)] = float(match.group(2))
    return found


def test_device_idle_goes_to_the_phase_that_queued_the_work_ending_it():
    text = timeline.report(two_steps())
    assert text.startswith("2 steps, 0.100 ms a step")
    # busy: 20-60, 95-100, 105-150, 170-200 = 120 of 200 us
    assert "device busy 60.0% of the window; idle 0.040 ms a step, by the" in text
    idle = figures(text, "device busy")
    # 0-20 and 60-95: their kernels were launched inside the gap, by `forward` (at 12, in
    # step) and `sampling` (at 92); 100-105 by step two's forward (at 104); 150-170 by a
    # launch at 140, before the gap began: the device waited on something else
    assert idle == pytest.approx({
        "step/forward": (20 + 5) / 2 / 1e3,
        "step/sampling": 35 / 2 / 1e3,
        "(queued before the gap)": 20 / 2 / 1e3,
    }, abs=5e-4)  # printed to the microsecond


def test_host_phases_and_syncs_are_the_engine_threads_own():
    text = timeline.report(two_steps())
    phases = figures(text, "host phases")
    assert phases["step"] == pytest.approx(0.1)
    assert phases["drain"] == pytest.approx(0.03)
    assert phases["forward"] == pytest.approx(0.005)
    assert "fill" not in phases
    assert figures(text, "engine thread blocked") == pytest.approx({"step/drain": 0.015})


def test_a_traced_cpu_run_reports_every_engine_phase_and_leaves_the_engine_as_it_was(
    tmp_path: Path,
):
    engine = engine_for(make_tiny_checkpoint(tmp_path, "llama", 2, 2, 64))
    step = engine.step
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    text = timeline.traced_generate(engine, [[1, 2, 3], [4, 5]], params, 2, 4)
    assert text.startswith("4 steps")
    phases = figures(text, "host phases")
    assert {"step", "schedule", "update", "execute"} <= set(phases)
    assert engine.step == step and "step" not in vars(engine)
    short = timeline.traced_generate(engine, [[1, 2, 3]], params, 50, 4)
    assert short == "the run ended before step 54: nothing traced"


def test_the_census_counts_every_step_and_token_by_kind(tmp_path: Path):
    engine = engine_for(make_tiny_checkpoint(tmp_path, "llama", 2, 2, 64),
                        max_num_batched_tokens=16, max_num_seqs=2)  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    # prompts of 20 and 14 tokens, 16 a step: two prefill-only steps (16 of the first; its
    # last 4 and 12 of the second), one mixed (the first's decode, the second's last 2), then
    # decodes until each has 4 outputs: 2 + 2 + 1
    text = timeline.step_census(engine, [list(range(3, 23)), list(range(3, 17))], params)
    assert engine.scheduler.schedule.__func__ is type(engine.scheduler).schedule
    lines = text.splitlines()
    assert re.fullmatch(r"\d+ steps, [\d.]+ s; outside steps [\d.]+ s\. By kind: .*", lines[0])
    counts = {m.group(1): (int(m.group(2)), int(m.group(3)))
              for line in lines[1:] if (m := re.match(r"  (\w+) +(\d+) +(\d+)", line))}  # fmt: skip
    assert counts == {"prefill": (2, 32), "mixed": (1, 3), "decode": (3, 5)}
    assert int(lines[0].split()[0]) == sum(n for n, _ in counts.values())
