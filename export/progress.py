"""Stage lines for long exports: `[label] stage (elapsed, peak RSS)`, also kept for reports."""

import time


class Progress:
    """Prints `[label] stage (elapsed s, peak RSS GB)` (unless `enabled` is False) and keeps each
    stage in `stages` as `(stage, seconds, peak RSS GB)`."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled
        self.started = time.perf_counter()
        self.stages = []

    def __call__(self, stage):
        self.stages.append((stage, time.perf_counter() - self.started, peak_rss_gb()))
        if self.enabled:
            print(f"[{self.label}] {stage} ({self.stages[-1][1]:.1f} s, "
                  f"peak RSS {self.stages[-1][2]:.2f} GB)", flush=True)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB: Linux's VmHWM (unlike `ru_maxrss`, it
    does not inherit the peak of the process that forked this one); elsewhere `ru_maxrss`."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
