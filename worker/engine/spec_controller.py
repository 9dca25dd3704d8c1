"""Whether speculation pays, per batch-size bucket: measured, in windows of consecutive steps.

What a mode costs is the wall time from the start of one step() call to the start of the next,
charged to the mode of the step that call ran (the speculator reports it). Those intervals tile
the run, so nothing is left out: a speculating step pays for draining the step in flight and for
running its own device work in the open, and the plain steps after it for the pipeline they
refill. Timing steps by when the device ran them would not add up: a plain step that a
speculating one drained would cost next to nothing, and a mean of per-step rates would then
favour the plain mode.

A mode is chosen for a window of steps, so a probe of the other mode carries the cost of
switching into it once per window, as running that mode for real would; and throughput is the
ratio of decayed sums of tokens and seconds, so every second weighs the same, however it was
cut into steps.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class _DecodeStep:
    """A pure decode step, charged when the next step() call begins."""

    num_decoding: int
    num_emitted: int
    speculated: bool  # the controller's decision for it
    started: float  # monotonic, when its step() call began


@dataclass
class _Tally:
    """One mode's output tokens and seconds: a window's, or the decayed sum of windows."""

    num_tokens: float = 0.0
    seconds: float = 0.0
    num_steps: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Bucket:
    interval: int  # steps between two probes of the slower mode
    learned: dict[bool, _Tally] = field(default_factory=lambda: {True: _Tally(), False: _Tally()})
    window: dict[bool, _Tally] = field(default_factory=lambda: {True: _Tally(), False: _Tally()})
    mode: bool = True  # the open window's mode
    num_window_steps: int = 0  # decisions left in the open window
    since_probe: int = 0
    probing: bool = False

    def faster(self) -> bool:
        return self.learned[True].tokens_per_s >= self.learned[False].tokens_per_s


class SpecController:
    """Per batch-size bucket (powers of two), output tokens per second of pure decode steps with
    speculation and without; picks the faster for a window of `window_steps` steps (steps that
    also prefill follow what pure decode steps taught, and do not speculate before that). A
    bucket first runs `warmup_steps` steps of each mode. It then probes the other mode for one
    window once every `reprobe_every` steps so a change of workload (acceptance) is noticed; each
    probe that confirms the choice doubles that interval (up to `max_reprobe_every`), so a settled
    bucket pays for probing less and less, and one that changes its mind starts over."""

    def __init__(
        self,
        adaptive: bool,
        disable_by_batch_size: int | None,
        warmup_steps: int = 3,
        window_steps: int = 8,
        reprobe_every: int = 64,
        max_reprobe_every: int = 2048,
        smoothing: float = 0.3,
    ) -> None:
        self.adaptive = adaptive
        self.disable_by_batch_size = disable_by_batch_size
        self.warmup_steps = warmup_steps
        self.window_steps = window_steps
        self.reprobe_every = reprobe_every
        self.max_reprobe_every = max_reprobe_every
        self.smoothing = smoothing
        self._buckets: dict[int, _Bucket] = {}
        self._last_decode: _DecodeStep | None = None  # not charged yet

    def decode_step_ran(
        self, num_decoding: int, num_emitted: int, speculated: bool, started: float
    ) -> None:
        """A pure decode step whose step() call began at `started` ran in mode `speculated`;
        it is charged when the next call begins (see step_began)."""
        self._last_decode = _DecodeStep(num_decoding, num_emitted, speculated, started)

    def step_began(self, started: float) -> bool | None:
        """A step() call begins at `started`: the pure decode step before it, if one ran, is
        charged the time since its own call began. Returns that step's mode, or None."""
        last, self._last_decode = self._last_decode, None
        if last is None:
            return None
        seconds = started - last.started
        self.observe(last.num_decoding, last.speculated, last.num_emitted, seconds)
        return last.speculated

    def _bucket_of(self, num_decoding: int) -> _Bucket:
        key = self.bucket(num_decoding)
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(interval=self.reprobe_every)
        return b

    @staticmethod
    def bucket(num_decoding: int) -> int:
        return 1 << max(num_decoding - 1, 0).bit_length()

    def learned(self) -> dict[int, dict[bool, tuple[float, int]]]:
        """Per bucket and mode (True: speculating): output tokens/s and the steps behind it."""
        return {
            key: {mode: (t.tokens_per_s, t.num_steps) for mode, t in b.learned.items()}
            for key, b in sorted(self._buckets.items())
        }

    def _warm(self, b: _Bucket) -> bool:
        return all(b.learned[mode].num_steps >= self.warmup_steps for mode in (True, False))

    def decide(self, num_decoding: int, measurable: bool = True) -> bool:
        """Speculate this step? `measurable`: the step will be pure decode, so it can teach the
        controller something; others only apply what was learned, and do not speculate in a
        bucket that has not learned yet (the safe side: never slower than no speculation)."""
        cap = self.disable_by_batch_size
        if cap is not None and num_decoding >= cap:
            return False
        if not self.adaptive:
            return True
        b = self._bucket_of(num_decoding)
        if not measurable:
            return self._warm(b) and b.faster()
        if b.num_window_steps == 0:
            self._close_window(b)
            self._open_window(b)
        b.num_window_steps -= 1
        b.since_probe += 1
        return b.mode

    def _open_window(self, b: _Bucket) -> None:
        for mode in (True, False):
            missing = self.warmup_steps - b.learned[mode].num_steps
            if missing > 0:
                b.mode, b.num_window_steps = mode, missing
                return
        b.mode, b.num_window_steps = b.faster(), self.window_steps
        if b.since_probe >= b.interval:
            b.since_probe, b.probing, b.mode = 0, True, not b.mode

    def _close_window(self, b: _Bucket) -> None:
        """Fold what the window's steps reported into each mode's decayed sums."""
        keep = 1.0 - self.smoothing
        for mode, window in b.window.items():
            if not window.num_steps:
                continue
            total = b.learned[mode]
            decay = keep if total.num_steps else 0.0
            total.num_tokens = decay * total.num_tokens + window.num_tokens
            total.seconds = decay * total.seconds + window.seconds
            total.num_steps += window.num_steps
            b.window[mode] = _Tally()
        if b.probing:
            b.probing = False
            switched = b.faster() == b.mode
            b.interval = (
                self.reprobe_every if switched else min(2 * b.interval, self.max_reprobe_every)
            )

    def observe(
        self, num_decoding: int, speculated: bool, num_emitted: int, seconds: float
    ) -> None:
        """A pure decode step in `speculated` mode emitted `num_emitted` tokens and took
        `seconds`, from the start of its step() call to the start of the next."""
        if seconds <= 0 or not self.adaptive:
            return
        window = self._bucket_of(num_decoding).window[speculated]
        window.num_tokens += num_emitted
        window.seconds += seconds
        window.num_steps += 1
