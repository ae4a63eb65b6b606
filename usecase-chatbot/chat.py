"""Talk to the support bot that train.py produced.

    python usecase-chatbot/chat.py --model_dir runs/chatbot                       # interactive
    python usecase-chatbot/chat.py --model_dir runs/chatbot --question "How much is the Team plan?"
    python usecase-chatbot/chat.py --model_dir runs/chatbot --examples 5          # held-out test questions
    python usecase-chatbot/chat.py --model_dir smollm2-135m-instruct --question "..."   # the base model
    cat questions.txt | python usecase-chatbot/chat.py --model_dir runs/chatbot      # one answer per line

A question too long for the model's context (``max_position_embeddings`` minus ``max_new_tokens``) is cut from
the left (its end is kept), with a warning on stderr.

``--model_dir`` is the folder ``train.py --output_dir`` wrote (LoRA adapter over the base model), its
``merged/`` sub-folder, or any model name for comparison. With ``--question`` only the answer is printed.
A run folder's abstention gate (``inference.json``) applies: a question that names what the help center never
mentions, or an answer the model is unsure of, gets the decline; an answer naming such a thing, or restating no
statement of the help center, is re-drawn first -- as in the run's report. With the run's router
(``router.safetensors``), a question that is not about the product is answered by the base model's own weights
(the adapter switched off), without the gate and without the bot's system prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices; not for chat users

from common import context  # noqa: E402
from common.errors import ConfigError, run_main  # noqa: E402
from common.evaluation import generate_chat, generate_chat_with_logprobs, key_terms_score  # noqa: E402
from common.models import load_for_inference  # noqa: E402
from common.paths import load_sibling  # noqa: E402

scoring = load_sibling(__file__, "scoring")  # the abstention gate, as train.py scored it
routing = load_sibling(__file__, "router")  # product questions -> the adapter, the rest -> the base weights

DEFAULT_SYSTEM = "You are the Brightboard support assistant."


def load(model_dir: str):
    """Model, tokenizer and inference settings (system prompt, answer length) saved by train.py; with the run's
    router (``settings["router"]``) when it has one and its adapter can be switched off (not a merged model)."""
    model, tokenizer, settings = load_for_inference(model_dir)
    if hasattr(model, "disable_adapter") and Path(model_dir).is_dir():
        settings["router"] = routing.Router.load(model_dir)
    return model, tokenizer, settings



def fit_question(model, tokenizer, settings: dict, question: str, history: list[dict]) -> tuple[str, list[dict]]:
    """Make the prompt fit the model's context: the history dropped first, then the question cut from the left,
    said on stderr (:func:`common.context.fit_question`)."""
    return context.fit_question(model, tokenizer, settings.get("system_prompt", DEFAULT_SYSTEM), question, history,
                                settings.get("max_new_tokens", 64))


def reply(model, tokenizer, settings: dict, conversations: list[list[dict]], desc: str = "thinking") -> list[str]:
    """Greedy answers. With the run's router, a question it does not take for a product question is answered by
    the base weights (adapter off, no gate) without the bot's system prompt -- as the report's general questions
    are asked; the others go through :func:`product_reply`."""
    router = settings.get("router")
    if router is None:
        return product_reply(model, tokenizer, settings, conversations, desc)
    to_adapter = routing.to_adapter(router, model, tokenizer, [c[-1]["content"] for c in conversations],
                                    settings.get("system_prompt", DEFAULT_SYSTEM))
    answers: list[str | None] = [None] * len(conversations)
    general = [i for i, t in enumerate(to_adapter) if not t]
    if general:
        with model.disable_adapter():
            plain = [[m for m in conversations[i] if m["role"] != "system"] for i in general]
            for i, a in zip(general, generate_chat(model, tokenizer, plain, settings.get("max_new_tokens", 64),
                                                   desc=desc)):
                answers[i] = a
    product = [i for i, t in enumerate(to_adapter) if t]
    if product:
        for i, a in zip(product, product_reply(model, tokenizer, settings, [conversations[i] for i in product], desc)):
            answers[i] = a
    return answers


def product_reply(model, tokenizer, settings: dict, conversations: list[list[dict]], desc: str) -> list[str]:
    """Greedy answers, through the run's abstention gate when it has one (``inference.json``): an answer naming
    what the docs never use is re-drawn (:func:`scoring.redraw`), and the decline replaces an answer the gate
    stops (:func:`scoring.gate_rule`, reading the log-probabilities of the answer given), as in the run's report."""
    gate = settings.get("abstention_gate")
    if not gate:
        return generate_chat(model, tokenizer, conversations, settings.get("max_new_tokens", 64), desc=desc)
    answers, logprobs = generate_chat_with_logprobs(model, tokenizer, conversations,
                                                    settings.get("max_new_tokens", 64), desc=desc)
    redrawn = scoring.redraw(model, tokenizer, conversations, answers, gate, settings.get("max_new_tokens", 64))
    logprobs = scoring.given_logprobs(model, tokenizer, conversations, answers, redrawn, logprobs)
    declines = scoring.gate_rule(gate)
    return [gate["decline"] if declines(c[-1]["content"], a, lp) else a
            for c, a, lp in zip(conversations, redrawn, logprobs)]


def answer(model, tokenizer, settings: dict, question: str, history: list[dict] | None = None) -> str:
    question, history = fit_question(model, tokenizer, settings, question, list(history or []))
    messages = [{"role": "system", "content": settings.get("system_prompt", DEFAULT_SYSTEM)},
                *history, {"role": "user", "content": question}]
    return reply(model, tokenizer, settings, [messages])[0]


def main(argv: list[str] | None = None, stdin=None) -> None:
    parser = argparse.ArgumentParser(description="Chat with a fine-tuned support bot.")
    parser.add_argument("--model_dir", required=True, help="train.py's --output_dir (or a model name)")
    parser.add_argument("--question", help="answer one question, print only the answer, and exit")
    parser.add_argument("--examples", type=int, help="answer the first N held-out test questions of the run")
    args = parser.parse_args(argv)
    stdin = stdin or sys.stdin
    if args.question is not None and not args.question.strip():
        raise ConfigError("--question is empty: pass the question text, or leave --question out to chat")
    if args.examples is not None and args.examples < 1:
        raise ConfigError(f"--examples must be >= 1, got {args.examples}")
    test_file = Path(args.model_dir) / "data" / "test.jsonl"
    if args.examples and not test_file.exists():
        raise ConfigError(f"{test_file} not found: --examples needs a folder written by train.py")
    model, tokenizer, settings = load(args.model_dir)

    if args.question:
        print(answer(model, tokenizer, settings, args.question.strip()))
        return
    if args.examples:
        rows = [json.loads(line) for line in test_file.open(encoding="utf-8") if line.strip()][: args.examples]
        answers = reply(model, tokenizer, settings, [r["messages"][:-1] for r in rows], desc="answering")
        for row, text in zip(rows, answers):
            ok = "correct" if key_terms_score(text, row["key_terms"]) else "missed"
            print(f"Q: {row['messages'][1]['content']}\nA: {text}\n   [{ok}; docs: {row['messages'][2]['content']}]\n")
        return
    if not stdin.isatty():  # a pipe or a file: one question per line, one answer per line, no prompt
        for line in stdin:
            if line.strip():
                print(answer(model, tokenizer, settings, line.strip()), flush=True)
        return

    print("Brightboard support bot. Empty line or Ctrl-D to quit.")
    history: list[dict] = []
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            break
        if not question:
            break
        text = answer(model, tokenizer, settings, question, history[-4:])
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": text}]
        print(f"bot> {text}")


if __name__ == "__main__":
    run_main(main)
