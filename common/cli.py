"""``cookbook`` command line: prepare the embedded models, scaffold a new use case, list use cases.

    cookbook models                     # convert the embedded defaults once (idempotent)
    cookbook new invoices --method sft   # a skeleton use case (sft | dpo | vision-classify | vision-multitask)
    cookbook list
    cookbook results runs/chatbot        # a README-ready markdown table from a run's report.json
    cookbook readme-tables               # regenerate every README's results table from results/report.json
    cookbook readme-tables --check       # exit 1 when a README table differs from its report (tests use this)
    cookbook export runs/chatbot --gguf q8_0   # GGUF + Ollama Modelfile (text runs); --onnx for vision runs
"""

from __future__ import annotations

import argparse
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
    from common.errors import run_main
    from common.scaffold import new_usecase

    def scaffold() -> None:
        folder = new_usecase(args.name, method=args.method, source=args.source, repo=REPO)
        print(f"Created {folder.name}/. Replace its TODOs and sample data (CONTRIBUTING.md); "
              f"tests/test_contract.py now runs it end to end.")

    run_main(scaffold)
    return 0


def _list(_: argparse.Namespace) -> int:
    for folder in sorted(REPO.glob("usecase-*")):
        first = (folder / "README.md").read_text().splitlines()[0] if (folder / "README.md").exists() else ""
        print(f"{folder.name:26s} {first.lstrip('# ')}")
    return 0


def _results(args: argparse.Namespace) -> int:
    import json

    from common.report import results_table

    print(results_table(json.loads((Path(args.run_dir) / "report.json").read_text())))
    return 0


def readme_tables(check: bool = False) -> list[str]:
    """Rewrite (or, with ``check``, compare) the generated results table of every use-case README.

    A README marks the table with ``<!-- results-table: usecase-x/results/report.json ... -->`` and
    ``<!-- /results-table -->``; the block is replaced by :func:`common.report.results_table` of that report.
    The top README's use-case table is generated too (:mod:`common.readme_tables`).
    Returns the READMEs whose table was (or, with ``check``, would be) changed.
    """
    import json

    from common.report import readme_table_block, results_table

    changed = []
    for readme in sorted(REPO.glob("usecase-*/README.md")):
        text = readme.read_text()
        report_path = f"{readme.parent.name}/results/report.json"
        span = readme_table_block(text, report_path)
        if span is None:
            continue
        table = "\n" + results_table(json.loads((REPO / report_path).read_text())) + "\n"
        if text[span[0]:span[1]] != table:
            changed.append(str(readme.relative_to(REPO)))
            if not check:
                readme.write_text(text[:span[0]] + table + text[span[1]:])
    from common.readme_tables import update_top_readme

    return changed + update_top_readme(REPO, check)


def _readme_tables(args: argparse.Namespace) -> int:
    changed = readme_tables(check=args.check)
    for name in changed:
        print(f"{name}: results table {'differs from' if args.check else 'regenerated from'} its report.json")
    return 1 if (args.check and changed) else 0


def _export(args: argparse.Namespace) -> int:
    import json

    from common.errors import run_main
    from common.run_export import export_run

    run_main(lambda: print(json.dumps(export_run(args.run_dir, gguf=args.gguf, onnx=args.onnx, card=args.card,
                                                 check=args.check, out_dir=args.out, threads=args.threads), indent=2)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cookbook", description="Fine-Tuning Cookbook helper commands.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="convert the embedded default models into the local cache").set_defaults(fn=_models)
    from common.scaffold import METHODS, describe

    new = sub.add_parser("new", help="write a new use-case folder: a skeleton of one method, or a copy of a recipe",
                         description=describe(), formatter_class=argparse.RawDescriptionHelpFormatter)
    new.add_argument("name", help="the use case's name: lowercase words joined by hyphens (usecase- is added)")
    new.add_argument("--method", metavar="METHOD", help="the skeleton to write: " + " | ".join(METHODS))
    new.add_argument("--from", dest="source", metavar="USECASE",
                     help="instead: copy this recipe's code, configs and data (not its README or results)")
    new.set_defaults(fn=_new)
    sub.add_parser("list", help="list the use cases").set_defaults(fn=_list)
    results = sub.add_parser("results", help="print a markdown results table from a run's report.json")
    results.add_argument("run_dir")
    results.set_defaults(fn=_results)
    tables = sub.add_parser("readme-tables", help="regenerate the README results tables from results/report.json")
    tables.add_argument("--check", action="store_true", help="only compare; exit 1 when a table is stale")
    tables.set_defaults(fn=_readme_tables)
    export = sub.add_parser("export", help="a finished run's model as GGUF + Ollama Modelfile (text) or ONNX (vision)")
    export.add_argument("run_dir", help="the folder train.py --output_dir wrote")
    export.add_argument("--gguf", choices=["f16", "q8_0", "f32", "bf16"], help="text runs: llama.cpp / Ollama file")
    export.add_argument("--onnx", action="store_true", help="vision runs: ONNX, checked against PyTorch")
    export.add_argument("--card", action="store_true", help="text runs: put report.json's metrics into the card")
    export.add_argument("--check", type=int, default=0, metavar="N",
                        help="with --gguf: compare llama.cpp's answers to N test questions with transformers'")
    export.add_argument("--out", help="output folder (default: RUN_DIR/gguf or RUN_DIR/onnx)")
    export.add_argument("--threads", type=int, default=2, help="CPU threads for the check and speed figures")
    export.add_argument("--debug", action="store_true", help="show the traceback of an error")
    export.set_defaults(fn=_export)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
