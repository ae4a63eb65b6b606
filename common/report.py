"""The report contract every use case follows: ``report.json`` + ``REPORT.md`` + PNG plots in the run folder.

Required keys of the report dict (checked by :func:`validate_report`)::

    usecase, model, method, hardware,
    train: {seconds, throughput: {value, unit}, peak_memory_mb},
    primary_metric,                      # a key present in metrics.before and metrics.after
    metrics: {before: {...}, after: {...}}   # the same evaluation, base model vs fine-tuned, held-out data

Optional, rendered when present: ``phases`` (wall time per phase of the run, from :class:`Stopwatch`),
``metrics_validation: {before, after}`` (the same metrics on the validation
split, where defaults are chosen) and ``command`` (how the run was started; filled in from ``sys.argv`` with
machine paths made relative). Anything else (data sizes, config, extra evaluations) may be added freely.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402

REQUIRED = ("usecase", "model", "method", "hardware", "train", "primary_metric", "metrics")


def validate_report(report: dict) -> None:
    """Raise ``ValueError`` naming the first missing or inconsistent field of the report contract."""
    missing = [k for k in REQUIRED if k not in report]
    if missing:
        raise ValueError(f"report is missing {missing}")
    for key in ("seconds", "throughput", "peak_memory_mb"):
        if key not in report["train"]:
            raise ValueError(f"report.train is missing '{key}'")
    for side in ("before", "after"):
        if side not in report["metrics"]:
            raise ValueError(f"report.metrics is missing '{side}'")
        if report["primary_metric"] not in report["metrics"][side]:
            raise ValueError(f"primary metric '{report['primary_metric']}' missing from metrics.{side}")


def plot_loss(log_history: Sequence[dict], path: Path) -> Path | None:
    """Training (and evaluation) loss against step, from a Trainer's ``state.log_history``."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _numeric_shared(before: dict, after: dict) -> list[str]:
    return [k for k, v in before.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(after.get(k), (int, float))
            and 0 <= v <= 1 and 0 <= after[k] <= 1]


def plot_before_after(before: dict, after: dict, path: Path, title: str = "Before -> after fine-tuning") -> Path | None:
    """Grouped bars of every metric in [0, 1] that both sides report."""
    keys = _numeric_shared(before, after)
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(keys) + 2), 3.6))
    xs = range(len(keys))
    w = 0.38
    b = ax.bar([x - w / 2 for x in xs], [before[k] for k in keys], w, label="base model", color="tab:gray")
    a = ax.bar([x + w / 2 for x in xs], [after[k] for k in keys], w, label="fine-tuned", color="tab:green")
    for bars in (b, a):
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(list(xs), keys, rotation=15)
    ax.set_ylim(0, 1.12)
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _metrics_table(before: dict, after: dict, primary: str) -> str:
    rows = ["| metric | base model | fine-tuned | change |", "|---|---|---|---|"]
    for k in [k for k in before if k in after]:
        bv, av = before[k], after[k]
        if isinstance(bv, (dict, list)) or isinstance(av, (dict, list)):
            continue
        delta = _fmt(av - bv) if isinstance(bv, (int, float)) and isinstance(av, (int, float)) else ""
        name = f"**{k}**" if k == primary else k
        rows.append(f"| {name} | {_fmt(bv)} | {_fmt(av)} | {delta} |")
    return "\n".join(rows)


def _finite(obj):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class Stopwatch:
    """Wall time of each phase of a run, so the report shows where the time goes (the next bottleneck).

        clock = Stopwatch()
        ...load and validate data...;  clock.lap("data")
        ...evaluate the base model...; clock.lap("base_evaluation")
        report["phases"] = clock.summary()
    """

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> float:
        """Charge the time since the previous lap (or the start) to ``name``; returns those seconds."""
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self.laps[name] = self.laps.get(name, 0.0) + seconds
        return seconds

    def summary(self) -> dict:
        """``{"total_seconds", name: {"seconds", "share"}}`` for the laps so far."""
        total = max(self._last - self._start, 1e-9)
        return {"total_seconds": round(total, 1),
                **{k: {"seconds": round(v, 1), "share": round(v / total, 3)} for k, v in self.laps.items()}}


def results_table(report: dict) -> str:
    """The README results table of a run, generated from its ``report.json`` (never typed by hand).

    Rows: every numeric metric the base and fine-tuned models share on the held-out test split, the same on the
    validation split when reported, then how the run was made (command, hardware, time, throughput, memory).
    """
    before, after, primary = report["metrics"]["before"], report["metrics"]["after"], report["primary_metric"]
    val = report.get("metrics_validation", {"before": {}, "after": {}})
    rows = ["| metric | split | base model | fine-tuned |", "|---|---|---|---|"]
    for split, b, a in (("test", before, after), ("validation", val["before"], val["after"])):
        for key in [k for k in a if isinstance(a[k], (int, float)) and not isinstance(a[k], bool)]:
            name = f"**{key}**" if key == primary else key
            base = b.get(key)
            rows.append(f"| {name} | {split} | {_fmt(base) if isinstance(base, (int, float)) else '—'} | "
                        f"{_fmt(a[key])} |")
    train = report["train"]
    tp = train["throughput"]
    rows += ["", "| run | |", "|---|---|", f"| command | `{report.get('command', '')}` |",
             f"| hardware | {report['hardware']} |", f"| training time | {train['seconds']:.0f} s |",
             f"| throughput | {_fmt(tp['value'])} {tp['unit']} |",
             f"| peak memory | {train['peak_memory_mb']:.0f} MiB |"]
    if train.get("trainable_parameters"):
        rows.append(f"| trainable parameters | {train['trainable_parameters'] / 1e6:.2f} M of "
                    f"{train['total_parameters'] / 1e6:.1f} M |")
    if "merge_max_abs_logit_diff" in train:
        rows.append(f"| merge check (max abs logit difference, merged vs base + adapter) | "
                    f"{train['merge_max_abs_logit_diff']:.1e} |")
    return "\n".join(rows)


README_TABLE_START = "<!-- results-table: generated from {} by `cookbook readme-tables`; do not edit -->"
README_TABLE_END = "<!-- /results-table -->"


def readme_table_block(readme_text: str, report_path: str) -> tuple[int, int] | None:
    """``(start, end)`` character span of the generated-table block for ``report_path`` in a README, or None."""
    start_marker = README_TABLE_START.format(report_path)
    start = readme_text.find(start_marker)
    if start < 0:
        return None
    end = readme_text.find(README_TABLE_END, start)
    if end < 0:
        raise ValueError(f"README block for {report_path} has no closing {README_TABLE_END}")
    return start + len(start_marker), end


def run_command(argv: Sequence[str] | None = None) -> str:
    """The command line of this run, fit for a committed report: ``python usecase-x/train.py --flag v``.

    Paths in it are made repository-relative (or reduced to their name), so no machine path is recorded.
    """
    from common.paths import portable_path

    argv = list(sys.argv if argv is None else argv)
    parts = [portable_path(a) if a.startswith("/") else a for a in argv]
    return " ".join(["python", *parts]) if parts and parts[0].endswith(".py") else " ".join(parts)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename: a killed run never leaves half a report."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(
    output_dir: str | Path,
    report: dict,
    log_history: Sequence[dict] | None = None,
    sections: Sequence[tuple[str, str]] = (),
) -> Path:
    """Validate and write ``report.json``, ``REPORT.md``, ``loss.png`` and ``before_after.png``.

    Args:
        output_dir: the run folder (``train.py --output_dir``).
        report: the report dict (see module docstring); written as JSON unchanged.
        log_history: ``trainer.state.log_history`` for the loss curve.
        sections: extra ``(heading, markdown)`` blocks for REPORT.md, e.g. a confusion-matrix image
            or example predictions written by the recipe.

    Returns:
        The path of ``report.json``.
    """
    validate_report(report)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    before, after, primary = report["metrics"]["before"], report["metrics"]["after"], report["primary_metric"]
    figures = []
    if log_history and plot_loss(log_history, out / "loss.png"):
        figures.append(("Loss curve", "loss.png"))
    if plot_before_after(before, after, out / "before_after.png"):
        figures.append(("Before -> after", "before_after.png"))
    report = {"command": run_command(), **report, "figures": [f for _, f in figures]}
    _write_atomic(out / "report.json", json.dumps(_finite(report), indent=2, default=str, allow_nan=False) + "\n")

    train = report["train"]
    tp = train["throughput"]
    lines = [
        f"# {report['usecase']}: fine-tuning report",
        "",
        f"- **model:** {report['model']}",
        f"- **method:** {report['method']}",
        f"- **hardware:** {report['hardware']}",
        f"- **training time:** {train['seconds']:.1f} s; throughput {_fmt(tp['value'])} {tp['unit']}; "
        f"peak memory {train['peak_memory_mb']:.0f} MiB",
        f"- **primary metric:** `{primary}`: {_fmt(before[primary])} -> **{_fmt(after[primary])}** (held-out data)",
        "",
        "## Before -> after (same evaluation, base model vs fine-tuned)",
        "",
        _metrics_table(before, after, primary),
        "",
    ]
    if "metrics_validation" in report:
        val = report["metrics_validation"]
        lines += ["## Validation split (where defaults are chosen; the test split chooses nothing)", "",
                  _metrics_table(val["before"], val["after"], primary), ""]
    if "phases" in report:
        phases = {k: v for k, v in report["phases"].items() if isinstance(v, dict)}
        lines += ["## Where the time went", "", f"{report['phases']['total_seconds']:.0f} s in all: " + ", ".join(
            f"{k.replace('_', ' ')} {v['seconds']:.0f} s ({v['share']:.0%})" for k, v in phases.items()), ""]
    lines += [f"Command: `{report['command']}`", ""]
    for title, name in figures:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.rstrip(), ""]
    _write_atomic(out / "REPORT.md", "\n".join(lines))
    return out / "report.json"
