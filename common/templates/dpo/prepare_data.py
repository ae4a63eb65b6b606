"""Load and check the {{title}} preference pairs: a prompt, the answer to prefer and the answer to avoid.

    python {{folder}}/prepare_data.py                                  # check the bundled sample, print the sizes
    python {{folder}}/prepare_data.py --out_dir runs/{{name}}-data    # ... and write the pairs train.py uses

One JSON object per line, in TRL's conversational preference format: ``prompt`` (the conversation so far),
``chosen`` and ``rejected`` (one assistant turn each). No prompt may appear in two files. Bring your own pairs: write
files of this shape and point ``train_file`` / ``valid_file`` / ``test_file`` (config.yaml or flags) at them; a bad
row stops the run naming the file and the row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.data import check_disjoint_prompts, read_rows, validate_rows, write_jsonl_splits
from common.errors import run_main
from common.paths import repo_path

HERE = Path(__file__).resolve().parent
DEFAULT_SYSTEM_PROMPT = "You are the {{title}} assistant. Be polite, specific and brief."


def load_splits(files: dict[str, str], system_prompt: str | None = None) -> dict[str, list[dict]]:
    """``{"train", "valid", "test"}`` pairs, validated; ``system_prompt`` is put first in prompts that have none.

    Raises:
        DataValidationError: a bad row (file and row named), or a prompt repeated across files.
    """
    splits = {}
    for split, file in files.items():
        rows, _ = validate_rows(read_rows(repo_path(file)), "preference", str(file))
        for row in rows:
            if isinstance(row["prompt"], str):
                row["prompt"] = [{"role": "user", "content": row["prompt"]}]
                row["chosen"], row["rejected"] = ([{"role": "assistant", "content": row[k]}] if isinstance(row[k], str)
                                                  else row[k] for k in ("chosen", "rejected"))
            if system_prompt and row["prompt"][0]["role"] != "system":
                row["prompt"] = [{"role": "system", "content": system_prompt}, *row["prompt"]]
        splits[split] = rows
    check_disjoint_prompts({split: (str(files[split]), rows) for split, rows in splits.items()})
    return splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for split in ("train", "valid", "test"):
        parser.add_argument(f"--{split}_file", default=str(HERE / "data" / f"{split}.jsonl"))
    parser.add_argument("--system_prompt", default=DEFAULT_SYSTEM_PROMPT)
    parser.add_argument("--out_dir", help="write the checked pairs here (train.jsonl, valid.jsonl, test.jsonl)")
    args = parser.parse_args(argv)
    splits = load_splits({s: getattr(args, f"{s}_file") for s in ("train", "valid", "test")}, args.system_prompt)
    print(", ".join(f"{name}: {len(rows)} pairs" for name, rows in splits.items()))
    if args.out_dir:
        for path in write_jsonl_splits(splits, args.out_dir).values():
            print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main)
