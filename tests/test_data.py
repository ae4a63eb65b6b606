"""Bad rows are rejected before training, with the file, the row and the problem in the message."""

import json

import pytest

from common.data import DataValidationError, load_dataset_validated, messages_to_prompt_completion, read_rows

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
    with pytest.raises(DataError, match=r"x\.jsonl: not UTF-8 text \(byte 0xe9 at byte offset 10\)"):
        read_rows(path)
