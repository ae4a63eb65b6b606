"""``cookbook`` command line: prepare the embedded models, scaffold a new use case, list use cases.

    cookbook models                     # convert the embedded defaults once (idempotent)
    cookbook new usecase-invoices --from usecase-chatbot
    cookbook list
    cookbook results runs/chatbot        # a README-ready markdown table from a run's report.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _models(_: argparse.Namespace) -> int:
    from common.models import EMBEDDED, EmbeddedModelMissing, prepare_embedded

    status = 0
    for alias in EMBEDDED:
        try:
            if alias == "efficientnet-lite0":
                from common.vision import prepare_efficientnet_lite0  # the vision pipeline owns its converter

                path = prepare_efficientnet_lite0()
            else:
                path = prepare_embedded(alias)
            print(f"{alias:24s} ready at {path}")
        except EmbeddedModelMissing as e:
            print(f"{alias:24s} MISSING: {e}", file=sys.stderr)
            status = 1
    return status


def _new(args: argparse.Namespace) -> int:
    name = args.name if args.name.startswith("usecase-") else f"usecase-{args.name}"
    src, dst = REPO / args.source, REPO / name
    if dst.exists():
        print(f"{dst} already exists", file=sys.stderr)
        return 1
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("processed", "generated", "__pycache__", "runs"))
    for path in dst.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".yaml", ".md"):
            path.write_text(path.read_text().replace(src.name, name))
    print(f"Created {dst} from {src.name}. Edit its data, prepare_data.py and README.md; "
          f"tests/test_contract.py now runs it end to end.")
    return 0


def _list(_: argparse.Namespace) -> int:
    for folder in sorted(REPO.glob("usecase-*")):
        first = (folder / "README.md").read_text().splitlines()[0] if (folder / "README.md").exists() else ""
        print(f"{folder.name:26s} {first.lstrip('# ')}")
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _results(args: argparse.Namespace) -> int:
    import json

    report = json.loads((Path(args.run_dir) / "report.json").read_text())
    before, after, train = report["metrics"]["before"], report["metrics"]["after"], report["train"]
    print(f"Run: `{report['model']}`, {report['method']}, on {report['hardware']}.\n")
    print("| metric (held-out) | base model | fine-tuned |\n|---|---|---|")
    for key, value in before.items():
        if isinstance(value, (int, float)) and isinstance(after.get(key), (int, float)):
            name = f"**{key}**" if key == report["primary_metric"] else key
            print(f"| {name} | {_fmt(value)} | {_fmt(after[key])} |")
    for key in after.keys() - before.keys():
        if isinstance(after[key], (int, float)):
            print(f"| {key} | | {_fmt(after[key])} |")
    tp = train["throughput"]
    print(f"\n| training | |\n|---|---|\n| time | {train['seconds']:.0f} s |\n"
          f"| throughput | {_fmt(tp['value'])} {tp['unit']} |\n| peak memory | {train['peak_memory_mb']:.0f} MiB |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cookbook", description="Fine-Tuning Cookbook helper commands.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="convert the embedded default models into the local cache").set_defaults(fn=_models)
    new = sub.add_parser("new", help="scaffold a new use-case folder by copying an existing one")
    new.add_argument("name")
    new.add_argument("--from", dest="source", default="usecase-chatbot")
    new.set_defaults(fn=_new)
    sub.add_parser("list", help="list the use cases").set_defaults(fn=_list)
    results = sub.add_parser("results", help="print a markdown results table from a run's report.json")
    results.add_argument("run_dir")
    results.set_defaults(fn=_results)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
