"""Load and check the {{title}} data: chat ``messages`` rows; held-out rows also name their ``key_terms``.

    python {{folder}}/prepare_data.py                                  # check the bundled sample, print the sizes
    python {{folder}}/prepare_data.py --out_dir runs/{{name}}-data    # ... and write the rows train.py trains on

One JSON object per line. ``train.jsonl`` holds conversations ending with the assistant's answer; ``valid.jsonl`` and
``test.jsonl`` hold the same shape plus ``key_terms``: the words a right answer must contain (``a|b``: either one).
No question may appear in two files. Bring your own data: write files of this shape and point ``train_file`` /
``valid_file`` / ``test_file`` (config.yaml or flags) at them; a bad row stops the run naming the file and the row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.data import DataValidationError, check_disjoint_prompts, read_rows, validate_rows, write_jsonl_splits
from common.errors import run_main
from common.paths import repo_path

HERE = Path(__file__).resolve().parent
DEFAULT_SYSTEM_PROMPT = "You are the {{title}} assistant. Answer in one or two short sentences."


def load_splits(files: dict[str, str], system_prompt: str | None = None) -> dict[str, list[dict]]:
    """``{"train", "valid", "test"}`` rows, validated; ``system_prompt`` is put first in rows that have none.

    Raises:
        DataValidationError: a bad row (file and row named), a held-out row without ``key_terms``, or a question
            repeated across files.
    """
    splits = {}
    for split, file in files.items():
        rows, _ = validate_rows(read_rows(repo_path(file)), "messages", str(file))
        for i, row in enumerate(rows, start=1):
            terms = row.get("key_terms")
            if split != "train" and not (isinstance(terms, list) and terms and all(isinstance(t, str) and t.strip()
                                                                                   for t in terms)):
                raise DataValidationError(f"{file}, row {i}: needs 'key_terms', a non-empty list of the words a "
                                          "right answer contains")
            if system_prompt and row["messages"][0]["role"] != "system":
                row["messages"] = [{"role": "system", "content": system_prompt}, *row["messages"]]
        splits[split] = rows
    check_disjoint_prompts({split: (str(files[split]), [{"prompt": r["messages"][:-1]} for r in rows])
                            for split, rows in splits.items()})
    return splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for split in ("train", "valid", "test"):
        parser.add_argument(f"--{split}_file", default=str(HERE / "data" / f"{split}.jsonl"))
    parser.add_argument("--system_prompt", default=DEFAULT_SYSTEM_PROMPT)
    parser.add_argument("--out_dir", help="write the checked rows here (train.jsonl, valid.jsonl, test.jsonl)")
    args = parser.parse_args(argv)
    splits = load_splits({s: getattr(args, f"{s}_file") for s in ("train", "valid", "test")}, args.system_prompt)
    print(", ".join(f"{name}: {len(rows)} rows" for name, rows in splits.items()))
    if args.out_dir:
        for path in write_jsonl_splits(splits, args.out_dir).values():
            print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main)
