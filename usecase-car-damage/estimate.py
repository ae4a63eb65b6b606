"""From the heads' outputs to a repair-cost estimate: two methods, a range, and how good each is.

(a) **table**: the most probable (part, damage, severity) that the cost table prices, looked up in the table --
    transparent (an adjuster sees the repair, parts, hours x rate) but only as good as the labels;
(b) **regression**: the cost head's own estimate (trained on log cost) -- it sees the whole photo and averages
    over uncertain labels, but gives no breakdown.

Both are scored on the validation split; the one with more estimates within +-20% becomes the model's default
(``method``), and the range shown with an estimate is the 10th-90th percentile of that method's relative error
on validation (``range_coverage``), so about 80% of true costs fall inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.vision.multitask import Task, regression_metrics

CLASS_TASKS = ("part", "damage", "severity")


@dataclass
class MultiTaskArguments:
    """The multi-task loss weights (chosen on validation: README) and the cost range."""

    weight_part: float = field(default=0.5, metadata={"help": "Loss weight of the part head (an easy task)."})
    weight_damage: float = field(default=1.0, metadata={"help": "Loss weight of the damage-type head."})
    weight_severity: float = field(default=1.0, metadata={"help": "Loss weight of the severity head."})
    weight_cost: float = field(default=0.5, metadata={"help": "Loss weight of the log-cost regression head."})
    cost_head_hidden: int = field(default=0, metadata={
        "help": "Hidden units of the cost head (0: a linear head; > 0: Linear -> ReLU -> Linear). Compared on "
                "validation: README."})
    head_dropout: float = field(default=0.1, metadata={"help": "Dropout on the pooled features before the heads."})
    range_coverage: float = field(default=0.8, metadata={"help": "Share of validation errors the range covers."})


def build_tasks(table, present: list[str], train_samples, args: MultiTaskArguments) -> list[Task]:
    """One head per label column present: classes from the cost table; cost standardized from the training split."""
    tasks = [Task(c, classes={"part": table.parts, "damage": table.damages, "severity": table.severities}[c],
                  weight=getattr(args, f"weight_{c}")) for c in CLASS_TASKS if c in present]
    if "cost" in present:
        logs = np.log([s.labels["cost"] for s in train_samples])
        tasks.append(Task("cost", weight=args.weight_cost, log=True, hidden=args.cost_head_hidden,
                          mean=float(logs.mean()),
                          std=float(max(logs.std(), 1e-3))))
    return tasks


def point_estimates(outputs: dict[str, np.ndarray], table) -> dict:
    """``{"table": [cost] | None, "combos": [CostEntry] | None, "regression": [cost] | None}`` for every image."""
    out = {"table": None, "combos": None, "regression": outputs.get("cost")}
    if all(c in outputs for c in CLASS_TASKS):
        combos = [table.best_combination(p, d, s)[0] for p, d, s in zip(*(outputs[c] for c in CLASS_TASKS))]
        out["combos"], out["table"] = combos, np.array([e.total for e in combos])
    return out


def calibrate(outputs: dict[str, np.ndarray], true_cost: np.ndarray, table, coverage: float = 0.8) -> dict:
    """On the validation split: each method's within-20% share and its error quantiles; picks the default."""
    est = point_estimates(outputs, table)
    lo_q, hi_q = (1 - coverage) / 2, 1 - (1 - coverage) / 2
    methods = {}
    for name in ("table", "regression"):
        if est[name] is None:
            continue
        ratio = np.log(true_cost / est[name])
        methods[name] = {"within_20pct": regression_metrics(est[name], true_cost, "c")["c_within_20pct"],
                         "low": float(np.exp(np.quantile(ratio, lo_q))), "high": float(np.exp(np.quantile(ratio, hi_q)))}
    best = max(methods, key=lambda m: methods[m]["within_20pct"]) if methods else None
    return {"method": best, "coverage": coverage, "methods": methods}


def cost_metrics(outputs: dict[str, np.ndarray], true_cost: np.ndarray, table, calibration: dict) -> dict:
    """``cost_table_*``, ``cost_regression_*`` and, for the method chosen on validation, ``cost_*`` (MAE, MAPE,
    within +-20%) plus ``cost_range_coverage``: the share of true costs inside the range shown."""
    est = point_estimates(outputs, table)
    metrics: dict = {}
    for name in ("table", "regression"):
        if est[name] is not None:
            metrics.update(regression_metrics(est[name], true_cost, f"cost_{name}"))
    best = calibration["method"]
    if best:
        chosen = calibration["methods"][best]
        metrics.update(regression_metrics(est[best], true_cost, "cost"))
        inside = (true_cost >= est[best] * chosen["low"]) & (true_cost <= est[best] * chosen["high"])
        metrics["cost_range_coverage"] = float(np.mean(inside))
    return metrics


def severity_on_damaged(outputs: dict[str, np.ndarray], samples, table) -> dict:
    """Severity accuracy on the damaged photos only (``none`` is easy: it follows from the damage type)."""
    if "severity" not in outputs:
        return {}
    idx = [i for i, s in enumerate(samples) if s.labels.get("damage", "x") != "none"]
    pred = outputs["severity"][idx].argmax(1)
    true = np.array([table.severities.index(samples[i].labels["severity"]) for i in idx])
    return {"severity_accuracy_damaged": float(np.mean(pred == true))} if idx else {}


def user_estimate(outputs_one: dict[str, np.ndarray], table, calibration: dict, method: str | None = None) -> dict:
    """What a user sees for one photo: the estimate, its range, which method gave it, and the breakdown."""
    method = method or calibration["method"]
    if method is None:
        return {"method": None, "note": "no cost head and no full set of label heads: no estimate"}
    one = {k: v[None] for k, v in outputs_one.items()}
    est = point_estimates(one, table)
    value = float(est[method][0])
    m = calibration["methods"][method]
    out = {"estimate": round(value, 2), "low": round(value * m["low"], 2), "high": round(value * m["high"], 2),
           "method": method, "range_covers": f"{calibration['coverage']:.0%} of validation errors",
           "method_within_20pct_on_validation": round(m["within_20pct"], 3)}
    if est["combos"] is not None:
        out["table_breakdown"] = est["combos"][0].breakdown()
    if est["regression"] is not None:
        out["regression_estimate"] = round(float(est["regression"][0]), 2)
    return out


def plot_calibration(outputs: dict[str, np.ndarray], true_cost: np.ndarray, table, path, title: str) -> None:
    """Predicted vs true cost (log axes) for both methods, with the +-20% band: how well the cost is calibrated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    est = point_estimates(outputs, table)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    lo, hi = true_cost.min() * 0.7, true_cost.max() * 1.4
    grid = np.geomspace(lo, hi, 50)
    ax.plot(grid, grid, "k-", lw=1, label="perfect")
    ax.fill_between(grid, grid * 0.8, grid * 1.2, color="tab:green", alpha=0.15, label="within +-20%")
    for name, colour, marker in (("table", "tab:blue", "o"), ("regression", "tab:orange", "x")):
        if est[name] is not None:
            within = regression_metrics(est[name], true_cost, "c")["c_within_20pct"]
            ax.scatter(true_cost, est[name], s=12, alpha=0.6, c=colour, marker=marker,
                       label=f"{name} ({within:.0%} within 20%)")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="true cost", ylabel="estimated cost",
           title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
