"""GPU utilisation while a load level runs: ``nvidia-smi`` in a subprocess, sampling every
200 ms, one CSV line per GPU per sample (index, utilization.gpu %, memory.used MiB).

nvidia-smi rather than pynvml: it is on every NVIDIA box, pynvml is not installed here, and a
subprocess costs the measured server nothing. The command is configurable
(``bench.gpu_check --util-command``), which is also how the tests feed it recorded lines.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time

NVIDIA_SMI = (
    "nvidia-smi --query-gpu=index,utilization.gpu,memory.used "
    "--format=csv,noheader,nounits -lms 200"
)


def parse_line(line: str) -> tuple[int, float, float] | None:
    """'0, 87, 4521' -> (gpu index, util %, memory MiB); 'util, mem' (no index) -> GPU 0;
    anything else (a header, '[N/A]') -> None."""
    fields = [f.strip() for f in line.split(",")]
    if len(fields) == 2:
        fields = ["0", *fields]
    if len(fields) != 3:
        return None
    try:
        return int(fields[0]), float(fields[1]), float(fields[2])
    except ValueError:
        return None


class UtilSampler:
    """start() launches the sampling command; stop() ends it and returns the summary of the
    samples taken after ``skip_s`` (the load generator's warm-up)."""

    def __init__(self, command: str = NVIDIA_SMI, skip_s: float = 0.0):
        self._argv = shlex.split(command)
        self._skip_s = skip_s
        self._samples: list[tuple[float, int, float, float]] = []  # (t, gpu, util, mem)
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._started = 0.0

    def start(self) -> UtilSampler:
        self._started = time.monotonic()
        self._proc = subprocess.Popen(
            self._argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parsed = parse_line(line)
            if parsed:
                self._samples.append((time.monotonic() - self._started, *parsed))

    def stop(self) -> dict:
        assert self._proc is not None and self._reader is not None
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)
        return summarise([s for s in self._samples if s[0] >= self._skip_s])


def summarise(samples: list[tuple[float, int, float, float]]) -> dict:
    """Per GPU: samples, util mean/max %, memory max MiB; ``busiest`` names the GPU with the
    highest mean utilisation (the model replica's, when Serve has one GPU)."""
    per_gpu: dict[int, dict] = {}
    for gpu in sorted({s[1] for s in samples}):
        utils = [s[2] for s in samples if s[1] == gpu]
        mems = [s[3] for s in samples if s[1] == gpu]
        per_gpu[gpu] = {
            "samples": len(utils),
            "util_mean_pct": round(sum(utils) / len(utils), 1),
            "util_max_pct": max(utils),
            "memory_max_mib": max(mems),
        }
    busiest = max(per_gpu, key=lambda g: per_gpu[g]["util_mean_pct"], default=None)
    return {
        "busiest_gpu": busiest,
        **(per_gpu[busiest] if busiest is not None else {"samples": 0}),
        "per_gpu": {str(g): v for g, v in per_gpu.items()},
    }
