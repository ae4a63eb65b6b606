"""Bad rows are rejected before training, with the file, the row and the problem in the message."""

import json
from pathlib import Path

import pytest

from common.data import DataValidationError, load_dataset_validated, messages_to_prompt_completion, read_rows

REPO = Path(__file__).resolve().parents[1]

GOOD = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}


def _jsonl(tmp_path, rows, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("bad, problem", [
    ({"text": "no messages"}, "missing field 'messages'"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "asistant", "content": "A"}]}, "messages[1].role is 'asistant'"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]}, "messages[1].content is empty"),
    ({"messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Q"}]}, "last turn"),
    ({"messages": [{"role": "user"}]}, "messages[0] must be an object with 'role' and 'content'"),
])
def test_bad_messages_row_names_file_row_and_problem(tmp_path, bad, problem):
    path = _jsonl(tmp_path, [GOOD, GOOD, bad])
    with pytest.raises(DataValidationError) as err:
        load_dataset_validated(path, "messages")
    assert f"{path}, row 3:" in str(err.value)
    assert problem in str(err.value)


def test_invalid_json_line_is_named(tmp_path):
    path = _jsonl(tmp_path, [GOOD, '{"messages": [', GOOD])
    with pytest.raises(DataValidationError, match=r"train.jsonl, row 2: not valid JSON"):
        read_rows(path)


def test_all_problems_are_counted_and_first_ones_listed(tmp_path):
    path = _jsonl(tmp_path, [GOOD] + [{"oops": i} for i in range(12)])
    with pytest.raises(DataValidationError) as err:
        load_dataset_validated(path, "messages")
    msg = str(err.value)
    assert msg.startswith("12 invalid row(s)") and "row 2:" in msg and "and 2 more" in msg


def test_skip_invalid_counts_skipped_rows(tmp_path):
    path = _jsonl(tmp_path, [GOOD, {"oops": 1}, GOOD])
    ds, skipped = load_dataset_validated(path, "messages", skip_invalid=True)
    assert (len(ds), skipped) == (2, 1)


def test_preference_schema(tmp_path):
    ok = {"prompt": "Q", "chosen": "good", "rejected": "bad"}
    same = {"prompt": "Q", "chosen": "x", "rejected": "x"}
    path = _jsonl(tmp_path, [ok, same], "prefs.jsonl")
    with pytest.raises(DataValidationError, match=r"prefs.jsonl, row 2: 'chosen' and 'rejected' are identical"):
        load_dataset_validated(path, "preference")


def test_prompt_completion_schema_accepts_strings_and_messages(tmp_path):
    plain = [{"prompt": "Summarize: X", "completion": "X."}]
    chat = [{"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]}]
    assert len(load_dataset_validated(_jsonl(tmp_path, plain, "p.jsonl"), "prompt_completion")[0]) == 1
    assert len(load_dataset_validated(_jsonl(tmp_path, chat, "c.jsonl"), "prompt_completion")[0]) == 1
    bad = _jsonl(tmp_path, [{"prompt": "Q", "completion": [{"role": "user", "content": "A"}]}], "b.jsonl")
    with pytest.raises(DataValidationError, match="row 1"):
        load_dataset_validated(bad, "prompt_completion")


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DataValidationError, match="unsupported file type"):
        read_rows(tmp_path / "x.parquet")


def test_messages_split_into_prompt_and_completion():
    pc = messages_to_prompt_completion({"messages": [{"role": "system", "content": "S"}, *GOOD["messages"]]})
    assert [m["role"] for m in pc["prompt"]] == ["system", "user"]
    assert pc["completion"] == [{"role": "assistant", "content": "Hello."}]


def test_non_utf8_file_names_the_byte_offset(tmp_path):
    from common.errors import DataError

    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl, line 1: not UTF-8 text \(byte 0xe9 at byte offset 10\)"):
        read_rows(path)


# --- every text file read one way: UTF-8 with or without a byte-order mark, any line ending -----------------------
def test_a_csv_saved_by_excel_reads_the_same_as_plain_utf8(tmp_path):
    from common.data import read_csv

    plain, excel = tmp_path / "plain.csv", tmp_path / "excel.csv"
    plain.write_bytes(b"path,label\na.png,scratch\nb.png,dent\n")
    excel.write_bytes(b"\xef\xbb\xbf" + b"path,label\r\na.png,scratch\r\nb.png,dent\r\n")  # "CSV UTF-8"
    assert read_csv(excel) == read_csv(plain) == (["path", "label"], [(2, {"path": "a.png", "label": "scratch"}),
                                                                      (3, {"path": "b.png", "label": "dent"})])
    assert read_rows(excel) == read_rows(plain)


def test_another_encoding_is_refused_naming_file_and_line(tmp_path):
    f = tmp_path / "costs.csv"
    f.write_bytes("part,damage\nbumper,dent\nb\u00e9quille,scratch\n".encode("cp1252"))  # Windows-1252
    with pytest.raises(DataValidationError, match=r"costs.csv, line 3: not UTF-8 text .*save the file as UTF-8"):
        read_rows(f)


def test_the_car_damage_cost_table_reads_a_byte_order_mark_and_names_a_bad_encoding(tmp_path):
    from common.paths import load_sibling

    costs = load_sibling(REPO / "usecase-car-damage" / "train.py", "costs")
    bundled = REPO / "usecase-car-damage" / "data" / "cost_table.csv"
    with_bom = tmp_path / "cost_table.csv"
    with_bom.write_bytes(b"\xef\xbb\xbf" + bundled.read_bytes())
    assert costs.CostTable.load(with_bom).entries == costs.CostTable.load(bundled).entries
    latin = tmp_path / "latin.csv"
    latin.write_bytes(bundled.read_bytes() + "wing,dent,minor,caf\u00e9 repair,0,1.0,60\n".encode("cp1252"))
    with pytest.raises(DataValidationError, match=r"latin.csv, line \d+: not UTF-8"):
        costs.CostTable.load(latin)


def test_a_malformed_boxes_file_names_file_and_row(tmp_path):
    from common.errors import DataError
    from common.vision.data import samples_from_folder

    for split in ("train", "val", "test"):
        for label in ("good", "scratch"):
            (tmp_path / split / label).mkdir(parents=True)
    (tmp_path / "boxes.jsonl").write_text('{"path": "train/good/a.png", "box": null}\n{not json\n')
    with pytest.raises(DataError, match=r"boxes.jsonl, row 2: not valid JSON"):
        samples_from_folder(tmp_path)
