"""Worker processes and brokers on one host for scripts/bench_scale.py: N `llm-worker serve`
processes (one per GPU through CUDA_VISIBLE_DEVICES, or on CPU), their readiness through
/readyz, and a clean SIGTERM shutdown; plus the local redis-server / Kafka broker the start
scripts run, each on a port of its own."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = REPO_ROOT / "scripts"


@dataclass(frozen=True)
class FleetSpec:
    """What every worker of a run shares; `service_env` holds its LLM_WORKER_* settings."""

    service_env: dict[str, str]  # queue, broker URLs, prefix / topics, mirror flag
    serve_args: list[str]  # engine flags for `serve` (--model, --load-format, ...)
    gpu_ids: list[str] | None  # one per worker; None: every worker on the CPU
    cpu_threads: int  # OMP_NUM_THREADS for CPU workers (2 cores: 1 keeps them off each other)
    log_dir: Path
    shutdown_grace_s: float = 30.0


@dataclass
class Worker:
    worker_id: str
    process: subprocess.Popen
    metrics_port: int
    log_path: Path

    def log_tail(self, num_lines: int = 30) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-num_lines:])

    def is_ready(self) -> bool:
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@dataclass
class Fleet:
    workers: list[Worker]
    stop_timeout_s: float  # the workers' shutdown grace and a margin
    exit_codes: list[int | None] = field(default_factory=list)
    num_killed: int = 0

    def check_alive(self) -> None:
        for worker in self.workers:
            code = worker.process.poll()
            if code is not None:
                raise RuntimeError(f"worker {worker.worker_id} exited with {code}; its log "
                                   f"({worker.log_path}) ends:\n{worker.log_tail()}")

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until every worker's /readyz answers 200 (model loaded, broker joined)."""
        start_s = time.monotonic()
        waiting = list(self.workers)
        while waiting:
            self.check_alive()
            if time.monotonic() - start_s > timeout_s:
                names = ", ".join(w.worker_id for w in waiting)
                raise TimeoutError(f"not ready after {timeout_s:.0f} s: {names}")
            waiting = [w for w in waiting if not w.is_ready()]
            if waiting:
                time.sleep(0.1)
        return time.monotonic() - start_s

    def stop(self) -> list[int | None]:
        """SIGTERM every worker (graceful: finish in-flight jobs, commit, exit 0); SIGKILL only
        those still running after the grace period and a margin. Returns the exit codes."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
                self.num_killed += 1
        self.exit_codes = [w.process.returncode for w in self.workers]
        return self.exit_codes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker_env(spec: FleetSpec, worker_id: str, index: int, metrics_port: int) -> dict[str, str]:
    env = {
        **os.environ,  # llm_worker is installed (or, on a GPU machine, on PYTHONPATH already)
        **spec.service_env,
        "LLM_WORKER_WORKER_ID": worker_id,
        "LLM_WORKER_METRICS_PORT": str(metrics_port),
        "LLM_WORKER_METRICS_HOST": "127.0.0.1",
        "LLM_WORKER_SHUTDOWN_GRACE_S": str(spec.shutdown_grace_s),
    }
    if spec.gpu_ids is None:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["OMP_NUM_THREADS"] = str(spec.cpu_threads)
    else:
        env["CUDA_VISIBLE_DEVICES"] = spec.gpu_ids[index]
    return env


def start_fleet(spec: FleetSpec, num_workers: int, stem: str) -> Fleet:
    """`python -m llm_worker serve` (`llm-worker serve`, same interpreter) N times."""
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    workers = []
    for index in range(num_workers):
        worker_id = f"{stem}-w{index}"
        port = free_port()
        log_path = spec.log_dir / f"{worker_id}.log"
        with log_path.open("ab") as log:  # a restart under the same id keeps the first log
            process = subprocess.Popen(
                [sys.executable, "-m", "llm_worker", "serve", *spec.serve_args],
                # not the checkout: `-m` would put it first on sys.path, and kernels/ there
                # shadows Hugging Face's `kernels`
                cwd=spec.log_dir, env=_worker_env(spec, worker_id, index, port),
                stdout=log, stderr=subprocess.STDOUT,
            )
        workers.append(Worker(worker_id, process, port, log_path))
    return Fleet(workers, spec.shutdown_grace_s + 30.0)


def visible_gpus() -> list[tuple[str, str]]:
    """(UUID, name) of each GPU this process may use, from nvidia-smi (no CUDA context is made
    here, so the workers get whole GPUs). UUIDs, because CUDA_VISIBLE_DEVICES=<index> counts in
    CUDA's fastest-first order, not nvidia-smi's bus order."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = [tuple(part.strip() for part in line.split(",", 2)) for line in listing.splitlines()
            if line.strip()]
    wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is None:
        return [(uuid, name) for _, uuid, name in gpus]
    chosen: list[tuple[str, str]] = []
    for item in filter(None, (w.strip() for w in wanted.split(","))):
        chosen.extend((uuid, name) for index, uuid, name in gpus if item in (index, uuid))
    return chosen


@dataclass
class LocalBroker:
    """A broker started by scripts/start_*.sh; stopped at the end only if this run started it."""

    script: str
    env: dict[str, str]
    address: str
    started_here: bool

    @classmethod
    def start(cls, script: str, env: dict[str, str], already_running: bool) -> "LocalBroker":
        done = subprocess.run(["bash", str(SCRIPTS_DIR / script)], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{script} failed: {done.stderr.strip()[-2000:]}")
        return cls(script, env, done.stdout.strip().splitlines()[-1], not already_running)

    def stop(self) -> None:
        if self.started_here:
            subprocess.run(["bash", str(SCRIPTS_DIR / self.script), "stop"],
                           env={**os.environ, **self.env}, capture_output=True, timeout=120)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
