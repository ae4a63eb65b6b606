"""The medical recipe: the escalation rule, the preference-data validation, and DPO on a tiny model.

The DPO test asserts learning (adapter weights changed, reward accuracy and margin up on the training pairs) and
that the reference is the model DPO started from (the SFT model), with no second copy.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, get_peft_config

from common.config import ModelArguments
from common.data import DataValidationError, check_disjoint_prompts, validate_rows
from common.errors import DataError
from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer
from common.paths import load_sibling
from common.preference import build_dpo_trainer, dpo_config_from, merge_adapter, pair_logps, pair_metrics

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "usecase-medical"
scoring = load_sibling(FOLDER / "train.py", "scoring")
prepare = load_sibling(FOLDER / "train.py", "prepare_data")


# ----------------------------------------------------------------------------- escalation rule
@pytest.mark.parametrize("answer, expected", [
    ("This is an emergency: call 911 or your local emergency number now.", True),
    ("Call 911 now.", True),
    ("Dial 999 straight away.", True),
    ("Call or text 988, the suicide and crisis line.", True),
    ("I recommend calling an ambulance.", True),
    ("Seek immediate medical attention.", True),
    ("Go to the Emergency Department at once.", True),  # case does not matter
    ("A heart attack is a medical emergency. If you have one, call 911.", True),  # the first clause escalates
    ("A cold is not an emergency.", False),
    ("Use your auto-injector if you have one and call 911 now.", True),  # the 'if' belongs to another clause
    ("Call 911 or go to the emergency department now, even if the pain eases.", True),
    ("This could be an emergency: call 911 or go to the emergency department right away.", True),
    ("Rest at home. Head to the ER now if you can't breathe.", False),  # conditional safety-netting
    ("If it gets worse, go to the emergency department.", False),
    ("Go to the emergency room if you have trouble breathing.", False),
    ("Should the pain spread, call 911.", False),
    ("You do not need to go to the emergency room.", False),  # negated
    ("There is no need to call 911 for a cold.", False),
    ("This is not an emergency; rest at home.", False),
    ("See a doctor if it lasts more than 10 days.", False),
    ("Call your doctor tomorrow.", False),
    ("My number is 9110.", False),  # 911 must be a whole number
    ("", False),
])
def test_escalation_rule(answer, expected):
    assert scoring.escalates(answer) is expected


def test_answer_metrics_counts_red_flags_and_benign_separately():
    questions = [{"red_flag": True, "term": "stroke"}, {"red_flag": True, "term": "sepsis"},
                 {"red_flag": False, "term": "common cold"}, {"red_flag": False, "term": "hiccups|singultus"}]
    answers = ["Call 911 now: this may be a stroke.", "Rest at home.", "A common cold. Call 911.", "Singultus."]
    m = scoring.answer_metrics(questions, answers)
    assert m == {"escalation_rate": 0.5, "over_escalation_rate": 0.5, "terminology_rate": 0.75}


# ----------------------------------------------------------------------------- data validation
def _pair(q="What is a cold?", chosen="A viral infection.", rejected="Take antibiotics."):
    return {"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


@pytest.mark.parametrize("row, problem", [
    ({k: v for k, v in _pair().items() if k != "rejected"}, "missing field 'rejected'"),
    (_pair(chosen="  "), "chosen\\[0\\].content is empty"),
    (_pair(chosen="Same answer.", rejected="Same   answer. "), "'chosen' and 'rejected' are identical"),
    ({**_pair(), "chosen": "A viral infection.", "rejected": "A viral  infection."}, "'chosen' and 'rejected' are identical"),
])
def test_preference_rows_are_validated_with_file_and_row(row, problem):
    with pytest.raises(DataValidationError, match=rf"pairs.jsonl, row 2: {problem}"):
        validate_rows([_pair(), row], "preference", "pairs.jsonl")


def test_a_prompt_repeated_across_splits_names_both_files_and_rows():
    train = [_pair("What is a cold?"), _pair("Why do I sneeze?")]
    test = [_pair("Is it bad?"), _pair("  why do I  SNEEZE? ")]  # case and spacing do not hide a repeat
    with pytest.raises(DataValidationError, match=r"test.jsonl, row 2: prompt already in the train split "
                                                  r"\(train.jsonl, row 2\)"):
        check_disjoint_prompts({"train": ("train.jsonl", train), "test": ("test.jsonl", test)})
    check_disjoint_prompts({"train": ("train.jsonl", train), "test": ("test.jsonl", test[:1])})  # fine


def test_bundled_data_holds_out_whole_conditions_on_both_sides_of_the_line():
    splits = prepare.load_splits("usecase-medical/data/conditions.yaml", prepare.SYSTEM_PROMPT,
                                 {s: None for s in prepare.SPLITS})
    conditions = {s: {r["condition"] for r in rows} for s, rows in splits.items()}
    assert not conditions["test"] & conditions["train"] and not conditions["valid"] & conditions["train"]
    for rows in splits.values():
        assert {r["red_flag"] for r in rows} == {True, False}
        for r in rows:  # the chosen answer escalates exactly when the condition is a red flag
            assert scoring.escalates(r["chosen"][0]["content"]) is r["red_flag"], r["condition"]
    failures = {r["failure"] for r in splits["train"]}
    assert {"missed", "delayed", "over_escalated", "invented", "wrong_term"} <= failures
    # over-escalated (benign) and missed/delayed (red flag) rejected answers really fail the escalation rule
    for r in splits["train"]:
        if r["failure"] in ("missed", "delayed", "over_escalated"):
            assert scoring.escalates(r["rejected"][0]["content"]) is not r["red_flag"], (r["condition"], r["failure"])


def test_extra_conditions_join_their_split_and_may_not_reuse_an_id(tmp_path):
    import yaml

    none = {s: None for s in prepare.SPLITS}
    extra = "usecase-medical/data/experiments/alarming_everyday.yaml"
    base = prepare.load_splits("usecase-medical/data/conditions.yaml", prepare.SYSTEM_PROMPT, none)
    more = prepare.load_splits("usecase-medical/data/conditions.yaml", prepare.SYSTEM_PROMPT, none,
                               extra_conditions_file=extra)
    added = {r["condition"] for r in more["train"]} - {r["condition"] for r in base["train"]}
    assert added == {c["id"] for c in yaml.safe_load((FOLDER / "data/experiments/alarming_everyday.yaml").read_text())}
    assert len(more["train"]) == len(base["train"]) + 7 * 9 and more["test"] == base["test"]
    assert all(not r["red_flag"] for r in more["train"] if r["condition"] in added)
    clash = tmp_path / "clash.yaml"
    clash.write_text(yaml.safe_dump(yaml.safe_load((FOLDER / "data/conditions.yaml").read_text())[:1]))
    with pytest.raises(DataError, match=r"clash.yaml: condition id\(s\) \['heart_attack'\] already in"):
        prepare.load_splits("usecase-medical/data/conditions.yaml", prepare.SYSTEM_PROMPT, none,
                            extra_conditions_file=str(clash))


@pytest.mark.parametrize("edit, problem", [
    (lambda c: c.pop("advice"), r"item 1 \(heart_attack\): missing field\(s\) \['advice'\]"),
    (lambda c: c.update(split="holdout"), r"item 1 \(heart_attack\): split must be one of"),
    (lambda c: c.update(red_flag="yes"), r"red_flag must be true or false"),
    (lambda c: c.update(prompts=[]), r"prompts must be a non-empty list"),
])
def test_conditions_file_errors_name_file_item_and_field(tmp_path, edit, problem):
    import yaml

    items = yaml.safe_load((FOLDER / "data/conditions.yaml").read_text())[:3]
    edit(items[0])
    path = tmp_path / "conditions.yaml"
    path.write_text(yaml.safe_dump(items))
    with pytest.raises(DataError, match=problem):
        prepare.read_conditions(path)


def test_user_jsonl_maps_strings_to_turns_and_bad_rows_stop_the_run(tmp_path):
    good = tmp_path / "train.jsonl"
    good.write_text(json.dumps({"prompt": "Is a cold serious?", "chosen": "Usually not.", "rejected": "Yes.",
                                "red_flag": False}) + "\n")
    rows = prepare.load_user_split(str(good), "System.")
    assert rows[0]["prompt"] == [{"role": "system", "content": "System."},
                                 {"role": "user", "content": "Is a cold serious?"}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Usually not."}] and rows[0]["term"] is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + json.dumps({"prompt": "Q?", "chosen": "A.", "rejected": "A."}) + "\n")
    with pytest.raises(DataValidationError, match=r"bad.jsonl, row 2: 'chosen' and 'rejected' are identical"):
        prepare.load_user_split(str(bad), "System.")


def test_a_bad_data_file_exits_2_before_any_model_loads(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text(json.dumps({"prompt": "Q?", "chosen": "A."}) + "\n")
    proc = subprocess.run([sys.executable, FOLDER / "train.py", "--config", FOLDER / "config.smoke.yaml",
                           "--output_dir", tmp_path / "run", "--train_file", bad, "--valid_file", bad,
                           "--test_file", bad], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "row 1: missing field 'rejected'" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "report.json").exists()


def test_one_process_run_reports_the_dpo_weights_own_answers(tmp_path, monkeypatch):
    """SFT -> DPO in one process, the generation cache on: the base model object is merged in place twice (SFT,
    then DPO), so the answers the report gives the DPO model must be the merged weights' own -- those a fresh load of
    OUTPUT_DIR/merged gives -- never the base model's read back from the cache."""
    from common.evaluation import generate_chat

    monkeypatch.setenv("COOKBOOK_GENERATION_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    train = load_sibling(FOLDER / "train.py", "train")
    train.main(["--config", str(FOLDER / "config.smoke.yaml"), "--output_dir", str(out), "--learning_rate", "0.05",
                "--dpo_learning_rate", "0.05", "--triage", "false"])
    evals = {tag: json.loads((out / f"eval_{tag}.json").read_text()) for tag in ("base", "sft", "dpo")}
    questions = {s: prepare.questions([json.loads(line) for line in (out / "data" / f"{s}.jsonl").open()])
                 for s in ("valid", "test")}
    merged = load_causal_lm(ModelArguments(model_name_or_path=str(out / "merged")))
    tokenizer = load_tokenizer(str(out))
    for split in ("valid", "test"):
        fresh = generate_chat(merged, tokenizer, [q["prompt"] for q in questions[split]], 8, 32)
        assert evals["dpo"]["answers"][split] == fresh, split  # the DPO weights' own answers
    assert evals["dpo"]["answers"] != evals["base"]["answers"]  # other weights, other answers: not the base's
    assert len({e["key"] for e in evals.values()}) == 3  # each stage's evaluation keyed by its own weights


# ----------------------------------------------------------------------------- DPO on a tiny model
def _sft_args(tmp_path, **kw):
    return SFTConfig(output_dir=str(tmp_path / "sft"), use_cpu=True, bf16=False, activation_checkpointing=False,
                     report_to=[], save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True,
                     per_device_train_batch_size=4, per_device_eval_batch_size=8, **kw)


def test_dpo_config_follows_the_cookbook_policy_not_trl_defaults(tmp_path):
    config = dpo_config_from(_sft_args(tmp_path), str(tmp_path / "dpo"), beta=0.25, learning_rate=1e-4)
    assert config.bf16 is False and config.use_cpu is True  # TRL's default would be bf16=True
    assert config.activation_checkpointing is False and config.gradient_checkpointing is False  # TRL: True
    assert config.beta == 0.25 and config.learning_rate == 1e-4 and config.output_dir.endswith("dpo")
    assert config.per_device_train_batch_size == 4 and config.seed == 0  # shared with the SFT stage


def _tiny_pairs():
    rows = []
    for q, good, bad in [("Chest pain and sweating?", "Call 911 now.", "Rest at home."),
                         ("A runny nose?", "A common cold; rest.", "Call 911 now."),
                         ("Face drooping?", "Call 911 now: stroke.", "Sleep it off."),
                         ("Itchy eyes in spring?", "Hay fever; antihistamines.", "Go to the ER now.")]:
        rows.append({"prompt": [{"role": "system", "content": "Health assistant."}, {"role": "user", "content": q}],
                     "chosen": [{"role": "assistant", "content": good}],
                     "rejected": [{"role": "assistant", "content": bad}]})
    return rows


def test_dpo_learns_against_the_sft_model_as_reference(tmp_path):
    model_args = ModelArguments(model_name_or_path=TINY_TEXT_ALIAS, lora_r=8, lora_alpha=16, lora_dropout=0.0)
    tokenizer = load_tokenizer(TINY_TEXT_ALIAS)
    torch.manual_seed(0)
    sft = load_causal_lm(model_args)  # stands in for the merged SFT model: any plain model is the reference
    rows = _tiny_pairs()
    reference = pair_logps(sft, tokenizer, rows)
    args = dpo_config_from(_sft_args(tmp_path), str(tmp_path / "dpo"), beta=0.5, learning_rate=5e-3, max_steps=12,
                           max_length=64)
    trainer = build_dpo_trainer(sft, tokenizer, args, Dataset.from_list(rows), peft_config=get_peft_config(model_args))
    adapter = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert adapter and all("lora" in n for n in adapter)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    trainer.train()

    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, adapter[n])]
    assert changed, "no LoRA weight moved"
    assert sum(p.numel() for p in trainer.model.parameters()) == n_params  # no second model copy was added
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]

    policy = pair_logps(trainer.model, tokenizer, rows)
    before = pair_metrics(reference, reference, beta=0.5)
    after = pair_metrics(policy, reference, beta=0.5)
    assert before["reward_margin"] == 0 and before["preference_accuracy"] == 0.5  # the reference against itself
    assert after["preference_accuracy"] == 1.0 and after["reward_margin"] > 0.1
    with trainer.model.disable_adapter():  # the adapter switched off is exactly the model DPO started from
        off = pair_logps(trainer.model, tokenizer, rows)
    for side in ("chosen", "rejected"):
        torch.testing.assert_close(off[side], reference[side], rtol=0, atol=1e-4)
    # our formula is DPOTrainer's own rewards/* (one batch holds every pair, so the averages agree)
    trl = trainer.evaluate(Dataset.from_list(rows))
    assert trl["eval_rewards/accuracies"] == pytest.approx(after["preference_accuracy"])
    assert trl["eval_rewards/margins"] == pytest.approx(after["reward_margin"], abs=1e-3)


def test_dpo_refuses_an_unmerged_adapter_and_full_dpo(tmp_path):
    from peft import get_peft_model

    model_args = ModelArguments(model_name_or_path=TINY_TEXT_ALIAS, lora_r=4, lora_alpha=8)
    tokenizer = load_tokenizer(TINY_TEXT_ALIAS)
    model = load_causal_lm(model_args)
    args = dpo_config_from(_sft_args(tmp_path), str(tmp_path / "dpo"))
    data = Dataset.from_list(_tiny_pairs())
    with pytest.raises(ValueError, match="needs a LoRA peft_config"):
        build_dpo_trainer(model, tokenizer, args, data)
    peft = get_peft_model(model, get_peft_config(model_args))
    with pytest.raises(ValueError, match="merge it first"):
        build_dpo_trainer(peft, tokenizer, args, data, peft_config=get_peft_config(model_args))
    with torch.no_grad():  # merging keeps the adapter's function: same log-probabilities, plain model back
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    rows = _tiny_pairs()
    with_adapter = pair_logps(peft, tokenizer, rows)
    merged = merge_adapter(peft)
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(pair_logps(merged, tokenizer, rows)["chosen"], with_adapter["chosen"],
                               rtol=0, atol=1e-3)


def _train_tiny_dpo(tmp_path, name, **loss):
    model_args = ModelArguments(model_name_or_path=TINY_TEXT_ALIAS, lora_r=8, lora_alpha=16, lora_dropout=0.0)
    tokenizer = load_tokenizer(TINY_TEXT_ALIAS)
    torch.manual_seed(0)
    model = load_causal_lm(model_args)
    rows = _tiny_pairs()
    reference = pair_logps(model, tokenizer, rows)
    args = dpo_config_from(_sft_args(tmp_path), str(tmp_path / name), beta=0.5, learning_rate=5e-3, max_steps=12,
                           max_length=64, **loss)
    trainer = build_dpo_trainer(model, tokenizer, args, Dataset.from_list(rows), peft_config=get_peft_config(model_args))
    trainer.train()
    return pair_metrics(pair_logps(trainer.model, tokenizer, rows), reference, beta=0.5)


def test_an_sft_term_in_the_dpo_loss_keeps_the_chosen_answers_likely(tmp_path):
    """RPO (``dpo_loss_type: [sigmoid, sft]``): the chosen answers' NLL joins DPO's loss, so their likelihood rises
    instead of falling with the rejected ones -- what greedy generation follows."""
    plain = _train_tiny_dpo(tmp_path, "dpo")
    rpo = _train_tiny_dpo(tmp_path, "rpo", loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0])
    assert rpo["preference_accuracy"] == 1.0 and plain["preference_accuracy"] == 1.0  # both learn the ranking
    assert rpo["reward_chosen"] > 0 and rpo["reward_chosen"] > plain["reward_chosen"] + 0.05


@pytest.mark.parametrize("flags, message", [
    (["--dpo_loss_type", "sigmoid", "nope"], "dpo_loss_type must be a list of"),
    (["--dpo_loss_type", "sigmoid", "sft", "--dpo_loss_weights", "1.0"], "dpo_loss_weights must be null or 2"),
])
def test_bad_dpo_loss_settings_stop_before_any_model_loads(tmp_path, flags, message):
    proc = subprocess.run([sys.executable, FOLDER / "train.py", "--config", FOLDER / "config.smoke.yaml",
                           "--output_dir", tmp_path / "run", *flags], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the triage check
triage = load_sibling(FOLDER / "train.py", "triage")
EMERGENCY = "This is an emergency: call 911 now. It can be a heart attack."


def _patched_triage(monkeypatch, probability, replies):
    """A triage check with a fixed P(red flag) and a scripted generator: ``replies`` are what successive greedy
    re-generations return (text, first token); every call is recorded."""
    calls = []

    def fake_greedy(model, tokenizer, text, max_new_tokens, forbid=None):
        calls.append({"text": text, "forbid": list(forbid or [])})
        return replies[len(calls) - 1]

    monkeypatch.setattr(triage, "_greedy", fake_greedy)
    monkeypatch.setattr(triage.Triage, "probabilities", lambda self, *a, **k: [probability])
    return triage.Triage(layer=1, weight=torch.zeros(4), bias=0.0), calls


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return load_tokenizer(TINY_TEXT_ALIAS)


CONVERSATION = [{"role": "system", "content": "S"}, {"role": "user", "content": "Crushing chest pain and sweating."}]


def test_triage_adds_the_escalation_the_red_flag_answer_lacked(monkeypatch, tiny_tokenizer):
    probe, calls = _patched_triage(monkeypatch, 0.9, [("Chest pain with sweating can be a heart attack.", 5)])
    out = triage.answer(None, tiny_tokenizer, [CONVERSATION], probe, 72, greedy=["Rest and take a painkiller."])
    assert out["actions"] == ["escalation added"] and out["probabilities"] == [0.9]
    assert out["answers"][0] == f"{triage.ESCALATION} Chest pain with sweating can be a heart attack."
    assert scoring.escalates(out["answers"][0])
    # the model continues its own answer after the forced opening (the assistant turn is left open)
    assert calls[0]["text"].endswith(triage.ESCALATION) and calls[0]["forbid"] == []


def test_triage_reopens_an_everyday_answer_that_escalated(monkeypatch, tiny_tokenizer):
    first = tiny_tokenizer(EMERGENCY, add_special_tokens=False)["input_ids"][0]
    probe, calls = _patched_triage(monkeypatch, 0.1, [("Go to the emergency department now.", 77),
                                                      ("Motion sickness: rest, sip water.", 88)])
    out = triage.answer(None, tiny_tokenizer, [CONVERSATION], probe, 72, greedy=[EMERGENCY])
    assert out["answers"] == ["Motion sickness: rest, sip water."] and out["actions"] == ["re-opened"]
    # each try forbids the opening of the escalating answer before it as the first token
    assert [c["forbid"] for c in calls] == [[first], [first, 77]]


def test_triage_keeps_an_escalation_the_model_insists_on(monkeypatch, tiny_tokenizer):
    probe, calls = _patched_triage(monkeypatch, 0.2, [("Call 911 now.", i) for i in range(3)])
    out = triage.answer(None, tiny_tokenizer, [CONVERSATION], probe, 72, retries=3, greedy=[EMERGENCY])
    assert out["answers"] == [EMERGENCY] and out["actions"] == ["re-opened: kept"] and len(calls) == 3


@pytest.mark.parametrize("probability, reply", [(0.9, EMERGENCY), (0.1, "Rest and sip water.")])
def test_triage_leaves_answers_it_agrees_with_untouched(monkeypatch, tiny_tokenizer, probability, reply):
    probe, calls = _patched_triage(monkeypatch, probability, [])
    out = triage.answer(None, tiny_tokenizer, [CONVERSATION], probe, 72, greedy=[reply])
    assert out["answers"] == [reply] and out["actions"] == [""] and calls == []


def test_forbid_first_masks_only_the_first_generated_token():
    processor = triage._ForbidFirst(prompt_length=3, token_ids=[1, 2])
    first = processor(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 5))
    later = processor(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5))
    assert first[0, 1] == first[0, 2] == -float("inf") and first[0, 0] == 0 and not torch.isinf(later).any()


def _questions(texts_and_flags):
    return [{"prompt": [{"role": "user", "content": t}], "red_flag": f} for t, f in texts_and_flags]


def test_triage_fit_picks_the_validation_best_layer_and_round_trips(tmp_path):
    model, tokenizer = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS)), load_tokenizer(
        TINY_TEXT_ALIAS)
    words = ["chest pain", "stroke", "bleeding", "cold", "sprain", "acne"]
    train = _questions([(f"I have {w} number {i}", w in words[:3]) for w in words for i in range(3)])
    valid = _questions([(f"Is {w} bad?", w in words[:3]) for w in words])
    probe, info = triage.fit(model, tokenizer, train, valid)
    losses = info["validation_log_loss_by_layer"]
    assert probe.layer == info["layer"] == losses.index(min(losses)) and len(losses) == model.config.num_hidden_layers + 1
    prompts = [q["prompt"] for q in valid]
    loaded = triage.Triage.load(probe.save(tmp_path).parent / "merged")  # a run's merged/ finds it in the parent
    assert loaded.layer == probe.layer and loaded.bias == pytest.approx(probe.bias)
    assert loaded.probabilities(model, tokenizer, prompts) == pytest.approx(probe.probabilities(model, tokenizer,
                                                                                               prompts), abs=1e-6)
    assert triage.Triage.load(tmp_path / "elsewhere" / "deeper") is None


def test_triage_fit_needs_both_labels_in_train_and_validation():
    one_sided = _questions([("a", True), ("b", True)])
    both = _questions([("a", True), ("b", False)])
    assert triage.fit(None, None, one_sided, both)[0] is None
    probe, info = triage.fit(None, None, both, one_sided)
    assert probe is None and "valid" in info["skipped"]


def test_metrics_follow_the_final_answers_and_keep_the_model_own_rates():
    qs = [{"red_flag": True, "term": "x"}, {"red_flag": True, "term": "x"}, {"red_flag": False, "term": "y"},
          {"red_flag": False, "term": "y"}]
    raw = ["Rest.", EMERGENCY, EMERGENCY, "Rest, y."]
    final = [f"{triage.ESCALATION} x", EMERGENCY, "Rest, y.", "Rest, y."]
    ev = {"logps": {"test": {k: [0.0] for k in ("chosen", "rejected")}}, "answers": {"test": raw},
          "triage": {"test": {"answers": final, "probabilities": [0.9, 0.8, 0.6, 0.1], "actions": []}},
          "triage_info": {"threshold": 0.5}}
    m = scoring.split_metrics(ev, ev, {"test": qs}, "test", 0.1)
    assert (m["escalation_rate"], m["over_escalation_rate"]) == (1.0, 0.0)
    assert (m["model_escalation_rate"], m["model_over_escalation_rate"]) == (0.5, 0.5)
    assert m["triage_accuracy"] == 0.75 and m["terminology_rate"] == 0.75


def test_greedy_with_a_forbidden_opening_starts_otherwise_on_a_real_model(tiny_tokenizer):
    model = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS))
    text = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    free, first = triage._greedy(model, tiny_tokenizer, text, 6)
    forced, other = triage._greedy(model, tiny_tokenizer, text, 6, forbid=[first])
    assert first != -1 and other not in (first, -1)  # the same greedy decoding, another first token


def test_chat_cuts_a_question_longer_than_the_context_and_says_so(capsys):
    chat = load_sibling(FOLDER / "chat.py", "chat")
    model, tokenizer, settings = chat.load(TINY_TEXT_ALIAS)
    model.config.max_position_embeddings = 128
    settings["max_new_tokens"] = 4
    question = "my head aches and " * 200 + "what should I do?"
    assert len(chat.ask(model, tokenizer, settings, [question])) == 1
    assert "only its last" in capsys.readouterr().err
