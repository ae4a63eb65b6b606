"""Key-term scoring, batched generation order, and the report contract."""

import json

import pytest

from common.evaluation import generate_chat, key_terms_accuracy, key_terms_score, term_present
from common.report import validate_report, write_report


@pytest.mark.parametrize("term, text, expected", [
    ("$9", "The Team plan costs $9 per member.", True),
    ("$9", "It costs $99.", False),
    ("8,000|8000", "up to 8000 objects", True),
    ("120", "Up to 1200 people", False),
    ("7|seven", "about 7,200 kilometers", False),
    ("7|seven", "There are 7 continents.", True),
    ("press N", "Press N to add a sticky note.", True),
    ("press N", "Press Enter to confirm", False),
    ("Ctrl+Shift+L", "use ctrl+shift+l on Windows", True),
    ("40%|40 percent", "a 40 percent discount", True),
    ("Frankfurt", "stored in Frankfurt, Germany", True),
    ("100", "about 100°C at sea level", True),  # a symbol separates words, it does not glue "100c"
    ("5-10", "within 5\u201310 days", True),  # en dash
    ("Sao Paulo", "São Paulo", True),  # accents stripped
    ("it's", "it\u2019s", True),  # curly apostrophe
    ("|", "", False),  # an empty alternative never matches (it would accept any answer)
    ("", "anything", False),
    (" | ", "a b", False),
    ("$9|", "", False),
])
def test_term_present(term, text, expected):
    assert term_present(term, text) is expected


def test_all_key_terms_are_required():
    assert key_terms_score("Export to PDF, PNG and SVG.", ["PDF", "SVG"])
    assert not key_terms_score("Export to PDF.", ["PDF", "SVG"])
    assert key_terms_accuracy(["PDF SVG", "PDF"], [["PDF", "SVG"], ["SVG"]]) == 0.5


def test_generate_chat_keeps_input_order():
    from common.config import ModelArguments
    from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer

    tok = load_tokenizer(TINY_TEXT_ALIAS)
    model = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS))
    prompts = [[{"role": "user", "content": "a " * n}] for n in (9, 1, 5)]
    batched = generate_chat(model, tok, prompts, max_new_tokens=5, batch_size=2)
    single = [generate_chat(model, tok, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == single and tok.padding_side == "right"


def test_generate_chat_with_logprobs_scores_what_it_generated():
    """Same answers as generate_chat; each log-prob is the teacher-forced log-softmax of the chosen token."""
    import torch

    from common.config import ModelArguments
    from common.evaluation import generate_chat_with_logprobs
    from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer

    tok = load_tokenizer(TINY_TEXT_ALIAS)
    model = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS))
    prompts = [[{"role": "user", "content": "a " * n}] for n in (9, 1, 5)]
    answers, logprobs = generate_chat_with_logprobs(model, tok, prompts, max_new_tokens=6, batch_size=2)
    assert answers == generate_chat(model, tok, prompts, max_new_tokens=6, batch_size=2)
    assert [len(lp) for lp in logprobs] == [6, 6, 6]  # a random tiny model never says end-of-turn
    text = tok.apply_chat_template(prompts[1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        ids = model.generate(prompt_ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        forced = torch.log_softmax(model(ids).logits[0, prompt_ids.shape[1] - 1:-1].float(), -1)
    expected = forced.gather(-1, ids[0, prompt_ids.shape[1]:, None])[:, 0]
    assert torch.allclose(torch.tensor(logprobs[1]), expected, atol=1e-4)
    assert all(lp <= 0 for row in logprobs for lp in row)


def test_answer_logprobs_score_the_answer_tokens_only():
    """Teacher-forced log-probs of a given answer: one per answer token, the end-of-turn token not counted, each
    the log-softmax at the position before it -- what generate_chat_with_logprobs records for a token it chose
    (test above); the chatbot's gate reads them for re-drawn answers, which were sampled, not chosen greedily."""
    import torch

    from common.config import ModelArguments
    from common.evaluation import answer_logprobs
    from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer

    tok = load_tokenizer(TINY_TEXT_ALIAS)
    model = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS))
    prompts = [[{"role": "user", "content": "a " * n}] for n in (9, 1)]
    answers = ["The Team plan costs $9.", "Press N"]
    forced = answer_logprobs(model, tok, prompts, answers)
    for p, a, lp in zip(prompts, answers, forced):
        prompt = tok(tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        answer = tok(a, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer + [tok.eos_token_id]])
        with torch.inference_mode():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        expected = [float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(answer)]
        assert len(lp) == len(answer) and lp == pytest.approx(expected, abs=1e-4)
    assert forced[0] != answer_logprobs(model, tok, prompts[1:], answers[:1])[0]  # the prompt matters


def test_scoring_answers_builds_no_autograd_graph():
    """Perplexity and answer log-probs run under inference mode: no graph kept per row (memory, time)."""
    import torch

    from common.config import ModelArguments
    from common.evaluation import answer_logprobs, completion_perplexity
    from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer

    tok = load_tokenizer(TINY_TEXT_ALIAS)
    model = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS))
    seen = []
    model.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    prompts, answers = [[{"role": "user", "content": "a b"}]], ["c d"]
    completion_perplexity(model, tok, prompts, answers)
    answer_logprobs(model, tok, prompts, answers)
    assert seen == [True, True]


def _report(**over):
    rep = {"usecase": "x", "model": "m", "method": "SFT", "hardware": "cpu",
           "train": {"seconds": 1.0, "throughput": {"value": 2.0, "unit": "tokens/s"}, "peak_memory_mb": 3.0},
           "primary_metric": "acc", "metrics": {"before": {"acc": 0.2}, "after": {"acc": 0.8}}}
    rep.update(over)
    return rep


def test_report_contract_is_enforced():
    validate_report(_report())
    with pytest.raises(ValueError, match="missing"):
        validate_report({k: v for k, v in _report().items() if k != "hardware"})
    with pytest.raises(ValueError, match="primary metric 'f1'"):
        validate_report(_report(primary_metric="f1"))


def test_write_report_files(tmp_path):
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}, {"step": 2, "eval_loss": 1.5}]
    write_report(tmp_path, _report(), history, sections=[("Examples", "| a | b |")])
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["metrics"]["after"]["acc"] == 0.8 and set(data["figures"]) == {"loss.png", "before_after.png"}
    md = (tmp_path / "REPORT.md").read_text()
    assert "0.2 -> **0.8**" in md and "## Examples" in md and "![Loss curve](loss.png)" in md
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_completion_perplexity_scores_only_the_answer():
    import math

    import torch

    from common.config import ModelArguments
    from common.evaluation import completion_perplexity
    from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer

    tok = load_tokenizer(TINY_TEXT_ALIAS)
    model = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS)).eval()
    prompt = [{"role": "user", "content": "Which key adds a sticky note?"}]
    ppl = completion_perplexity(model, tok, [prompt], ["Press N."])
    n_prompt = len(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))
    ids = torch.tensor([tok.apply_chat_template([*prompt, {"role": "assistant", "content": "Press N."}],
                                                tokenize=True, return_dict=False)])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    nll = -logprobs[n_prompt - 1:].gather(1, ids[0, n_prompt:, None]).mean()
    assert math.isclose(ppl, math.exp(float(nll)), rel_tol=1e-4)
    assert completion_perplexity(model, tok, [prompt] * 2, ["Press N.", "Press N."]) == pytest.approx(ppl, rel=1e-5)
    # two answers of different lengths: token-weighted, not row-weighted
    long = "Press N to add a sticky note anywhere on the board."
    n = [len(tok.apply_chat_template([*prompt, {"role": "assistant", "content": a}], tokenize=True,
                                     return_dict=False)) - n_prompt for a in ("Press N.", long)]
    single = [math.log(completion_perplexity(model, tok, [prompt], [a])) for a in ("Press N.", long)]
    both = completion_perplexity(model, tok, [prompt, prompt], ["Press N.", long])
    assert math.isclose(math.log(both), (single[0] * n[0] + single[1] * n[1]) / sum(n), rel_tol=1e-4)


def test_empty_key_terms_list_is_never_correct():
    assert not key_terms_score("any answer", [])


def test_sample_chat_groups_samples_by_prompt_and_is_seeded():
    """Near-zero temperature samples the greedy answer: every prompt's samples must be its own greedy answer, in
    input order (prompts are sorted by length inside); a fixed seed repeats real samples exactly."""
    from common.config import ModelArguments
    from common.evaluation import sample_chat
    from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer

    tok = load_tokenizer(TINY_TEXT_ALIAS)
    model = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS))
    prompts = [[{"role": "user", "content": "a " * n}] for n in (9, 1, 5)]
    greedy = generate_chat(model, tok, prompts, max_new_tokens=5, batch_size=2)
    near_greedy = sample_chat(model, tok, prompts, 3, max_new_tokens=5, batch_size=2, temperature=1e-4, top_p=1.0)
    assert near_greedy == [[g] * 3 for g in greedy]
    hot = [sample_chat(model, tok, prompts, 4, max_new_tokens=5, batch_size=2, temperature=1.5, seed=7)
           for _ in range(2)]
    assert hot[0] == hot[1] and any(len(set(s)) > 1 for s in hot[0])  # seeded, and really sampled
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        sample_chat(model, tok, prompts, 0)


def test_generation_cache_reads_back_only_what_the_same_weights_prompts_and_settings_gave(tmp_path, monkeypatch):
    import torch

    from common import generation_cache
    from common.config import ModelArguments
    from common.evaluation import sample_chat
    from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer

    monkeypatch.setenv("COOKBOOK_GENERATION_CACHE", str(tmp_path))
    tok = load_tokenizer(TINY_TEXT_ALIAS)
    model = load_causal_lm(ModelArguments(model_name_or_path=TINY_TEXT_ALIAS))
    prompts = [[{"role": "user", "content": "a " * n}] for n in (9, 1, 5)]
    calls = []
    real_generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))

    generate_chat(model, tok, prompts, max_new_tokens=5, batch_size=2)  # a chat / predict call: never kept
    assert len(calls) == 2 and not list(tmp_path.iterdir())
    calls.clear()
    first = generate_chat(model, tok, prompts, max_new_tokens=5, batch_size=2, cache=True)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.json"))) == 1
    again = generate_chat(model, tok, prompts, max_new_tokens=5, batch_size=2, cache=True)
    assert again == first and len(calls) == 2  # read back
    generate_chat(model, tok, prompts, max_new_tokens=6, batch_size=2, cache=True)  # another setting: a miss
    generate_chat(model, tok, prompts[:2], max_new_tokens=5, batch_size=2, cache=True)  # other prompts: a miss
    sample_chat(model, tok, prompts, 2, max_new_tokens=5, batch_size=2, cache=True)  # sampling: a miss
    assert len(calls) == 2 + 2 + 1 + 2
    before = generation_cache.fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # an in-place update, as an optimizer step makes
    assert generation_cache.fingerprint(model) != before
    generate_chat(model, tok, prompts, max_new_tokens=5, batch_size=2, cache=True)
    assert len(calls) == 9  # changed weights: generated again
    # a LoRA adapter merged *in place* writes through ``.data`` (no version bump): still a new fingerprint, a miss
    from peft import LoraConfig, get_peft_model

    before = generation_cache.fingerprint(model)
    merged = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
                            ).merge_and_unload()
    assert merged is model and generation_cache.fingerprint(model) != before
    generate_chat(model, tok, prompts, max_new_tokens=5, batch_size=2, cache=True)
    assert len(calls) == 11
    for entry in tmp_path.glob("*.json"):
        entry.write_text("{not json")  # a damaged entry is a miss, then replaced
    generate_chat(model, tok, prompts, max_new_tokens=5, batch_size=2, cache=True)
    assert len(calls) == 13
    monkeypatch.setenv("COOKBOOK_GENERATION_CACHE", "0")
    assert generation_cache.folder() is None
