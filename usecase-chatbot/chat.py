"""Talk to the support bot that train.py produced.

    python usecase-chatbot/chat.py --model_dir runs/chatbot                       # interactive
    python usecase-chatbot/chat.py --model_dir runs/chatbot --question "How much is the Team plan?"
    python usecase-chatbot/chat.py --model_dir runs/chatbot --examples 5          # held-out test questions
    python usecase-chatbot/chat.py --model_dir smollm2-135m-instruct --question "..."   # the base model

``--model_dir`` is the folder ``train.py --output_dir`` wrote (LoRA adapter over the base model), its
``merged/`` sub-folder, or any model name for comparison. With ``--question`` only the answer is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices; not for chat users

from common.evaluation import generate_chat, key_terms_score  # noqa: E402
from common.models import load_tokenizer, load_trained_causal_lm, resolve_model  # noqa: E402

DEFAULT_SYSTEM = "You are the Brightboard support assistant."


def load(model_dir: str):
    """Model, tokenizer and inference settings (system prompt, answer length) saved by train.py."""
    path = Path(model_dir)
    settings_file = next((p / "inference.json" for p in (path, path.parent) if (p / "inference.json").exists()), None)
    settings = json.loads(settings_file.read_text()) if settings_file else {}
    if path.exists():
        model, tokenizer = load_trained_causal_lm(path)
    else:  # a model name: embedded alias or hub id
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(resolve_model(model_dir), use_safetensors=True).eval()
        tokenizer = load_tokenizer(model_dir)
    return model, tokenizer, settings


def answer(model, tokenizer, settings: dict, question: str, history: list[dict] | None = None) -> str:
    messages = [{"role": "system", "content": settings.get("system_prompt", DEFAULT_SYSTEM)},
                *(history or []), {"role": "user", "content": question}]
    return generate_chat(model, tokenizer, [messages], settings.get("max_new_tokens", 64), desc="thinking")[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Chat with a fine-tuned support bot.")
    parser.add_argument("--model_dir", required=True, help="train.py's --output_dir (or a model name)")
    parser.add_argument("--question", help="answer one question, print only the answer, and exit")
    parser.add_argument("--examples", type=int, help="answer the first N held-out test questions of the run")
    args = parser.parse_args(argv)
    model, tokenizer, settings = load(args.model_dir)

    if args.question:
        print(answer(model, tokenizer, settings, args.question))
        return
    if args.examples:
        test_file = Path(args.model_dir) / "data" / "test.jsonl"
        if not test_file.exists():
            raise SystemExit(f"{test_file} not found: --examples needs a folder written by train.py")
        rows = [json.loads(line) for line in test_file.open()][: args.examples]
        answers = generate_chat(model, tokenizer, [r["messages"][:-1] for r in rows],
                                settings.get("max_new_tokens", 64))
        for row, reply in zip(rows, answers):
            ok = "correct" if key_terms_score(reply, row["key_terms"]) else "missed"
            print(f"Q: {row['messages'][1]['content']}\nA: {reply}\n   [{ok}; docs: {row['messages'][2]['content']}]\n")
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
        reply = answer(model, tokenizer, settings, question, history[-4:])
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        print(f"bot> {reply}")


if __name__ == "__main__":
    main()
