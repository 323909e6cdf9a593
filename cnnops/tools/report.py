"""What `python -m cnnops bench` writes: the environment, a text / Markdown table, JSON, a chart."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata

import torch

import cnnops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(*argv) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device) -> dict:
    """The machine, the software and the commit a result was measured with."""
    device = torch.device(device)
    commit = _command("git", "rev-parse", "HEAD")
    if commit and _command("git", "status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               host=platform.node(), platform=platform.platform(), python=platform.python_version(),
               torch=torch.__version__, triton=_version("triton"), cnnops=cnnops.__version__,
               commit=commit, command=shlex.join([os.path.basename(sys.executable), "-m",
                                                  "cnnops"] + sys.argv[1:]),
               device=str(device), threads=torch.get_num_threads(), cpu=_cpu_name(),
               backends_available=cnnops.available_backends(device),
               # other work on the machine skews CPU timings: record how busy it was
               load_average=[round(x, 2) for x in os.getloadavg()])
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count,
                   gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   driver=_command("nvidia-smi", "--query-gpu=driver_version",
                                   "--format=csv,noheader"))
    return env


def _time(seconds) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _rate(row) -> str:
    if row.get("time_s") is None:
        return "-"
    if row["op"] == "conv2d":  # arithmetic-bound: a flop rate; the others move bytes
        rate, unit = row["tflops"] * 1e12, "FLOP/s"
    else:
        rate, unit = row["gbps"] * 1e9, "B/s"
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if rate >= scale:
            return f"{rate / scale:.3g} {prefix}{unit}"
    return f"{rate / 1e3:.3g} k{unit}"


def _cells(row) -> list[str]:
    ok = row["status"] == "ok"
    speedup = f"{row['speedup']:.2f}x" if ok and row.get("speedup") else "-"
    roofline = f"{100 * row['roofline']:.1f}%" if ok else "-"
    fma = f"{100 * row['fma_peak_fraction']:.1f}%" if ok and "fma_peak_fraction" in row else "-"
    copy = f"{100 * row['copy_fraction']:.1f}%" if ok and "copy_fraction" in row else "-"
    note = "" if ok else f"{row['status']}: {row.get('reason', '')}"
    backend = row["backend"] + (f" -> {row['chose']}" if row.get("chose") else "")
    return [row["layer"], backend, f"{row['dtype']} {row['layout']} {row['mode']}",
            _time(row.get("time_s")), _rate(row), speedup, roofline, fma, copy, note]


# "FMA peak" and "copy BW": the CPU's hard limits (timing.cpu_limits), "-" on GPU
HEADER = ["layer", "backend", "dtype layout mode", "time", "rate", "vs torch", "roofline",
          "FMA peak", "copy BW", "note"]


@dataclass
class Report:
    env: dict
    ceilings: dict
    rows: list
    settings: dict
    wall_s: float

    def ceiling_lines(self) -> list[str]:
        peaks = ", ".join(f"{d} {v / 1e12:.3g} TFLOP/s" for d, v in
                          self.ceilings["peak_flops"].items())
        lines = [f"bandwidth (copy, read + write): {self.ceilings['bandwidth'] / 1e9:.3g} GB/s",
                 f"arithmetic rate (the faster of a matrix product and a 3x3 conv): {peaks}"]
        limits = self.ceilings.get("cpu_limits")
        if limits:
            fma = limits["fma_peak_flops"]
            lines += [f"CPU limits at {limits['threads']} threads: FMA peak float32 "
                      + (f"{fma / 1e9:.4g} GFLOP/s" if fma else "n/a")
                      + f" ({limits['fma_source']}); copy bandwidth "
                      f"{limits['copy_bandwidth'] / 1e9:.3g} GB/s ({limits['copy_source']}); "
                      f"each layer's rate as a fraction of them: columns FMA peak, copy BW"]
        return lines

    def table(self) -> str:
        lines = [[str(c) for c in HEADER]] + [_cells(r) for r in self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER) - 1)]
        text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1]
                for line in lines]
        device = self.env.get("gpu") or self.env.get("cpu")
        return "\n".join([f"device: {device} ({self.env['device']}, {self.env['threads']} "
                          f"threads)"] + self.ceiling_lines() + text)

    def markdown(self) -> str:
        env = ", ".join(f"{k} {v}" for k, v in self.env.items()
                        if k not in ("command", "date") and v is not None)
        out = [f"# cnnops bench, {self.env['date']}", "", f"`{self.env['command']}`", "",
               env, ""] + [f"- {line}" for line in self.ceiling_lines()]
        out += ["", f"Speed-up is the torch backend's time over the backend's (above 1: faster "
                    f"than PyTorch). Roofline is the least time the work can take on this "
                    f"device (flops over the product rate, or minimum bytes over the copy "
                    f"bandwidth, whichever is longer) over the measured median. Wall time "
                    f"{self.wall_s:.0f} s.", ""]
        out += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |"
                for r in self.rows]
        return "\n".join(out) + "\n"

    def to_json(self) -> dict:
        settings = {k: v for k, v in self.settings.items() if _jsonable(v)}
        return dict(environment=self.env, ceilings=self.ceilings, settings=settings,
                    wall_s=self.wall_s, results=self.rows)

    def write(self, folder: str, stem: str = "bench", chart: bool = True) -> list[str]:
        os.makedirs(folder, exist_ok=True)
        base = os.path.join(folder, stem)
        with open(base + ".json", "w") as f:
            json.dump(self.to_json(), f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(self.markdown())
        paths = [base + ".json", base + ".md"]
        if chart:
            draw_chart(self, base + ".png")
            paths.append(base + ".png")
        return paths


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def draw_chart(report: Report, path: str) -> None:
    """Two panels per layer: speed-up over the torch backend, and fraction of the roofline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report.rows if r["status"] == "ok"]
    configs = list(dict.fromkeys((r["layer"], r["dtype"], r["layout"], r["mode"]) for r in ok))
    labels = [" ".join(c[:1] + tuple(x for x, keep in zip(c[1:], _varies(configs)) if keep))
              for c in configs]
    backends = list(dict.fromkeys(r["backend"] for r in ok))
    by_key = {(r["layer"], r["dtype"], r["layout"], r["mode"], r["backend"]): r for r in ok}
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True,
                                      figsize=(max(8.0, 0.35 * len(configs) + 3), 9))
    width = 0.8 / max(1, len(backends))
    for i, backend in enumerate(backends):
        xs = [j + (i - (len(backends) - 1) / 2) * width for j in range(len(configs))]
        rows = [by_key.get(c + (backend,)) for c in configs]
        speedups = [r["speedup"] if r and r.get("speedup") else 0 for r in rows]
        if backend != "torch":
            top.bar(xs, speedups, width, label=backend)
        bottom.bar(xs, [100 * r["roofline"] if r else 0 for r in rows], width, label=backend)
    top.axhline(1.0, color="black", linewidth=0.8)
    top.set_yscale("log")
    top.set_ylabel("speed-up over torch (x)")
    if len(backends) == 1:
        top.text(0.5, 0.5, "only the torch backend ran here", ha="center",
                 transform=top.transAxes)
    else:
        top.legend()
    bottom.set_ylabel("% of roofline")
    bottom.legend()
    bottom.set_xticks(range(len(configs)))
    bottom.set_xticklabels(labels, rotation=75, ha="right", fontsize=7)
    device = report.env.get("gpu") or report.env.get("cpu")
    top.set_title(f"cnnops vs PyTorch on {device}, batch {report.settings.get('batch')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _varies(configs) -> list[bool]:
    """Which of dtype, layout, mode take more than one value (only those go in the labels)."""
    return [len({c[i] for c in configs}) > 1 for i in (1, 2, 3)]
