"""Worker of tests/test_multiprocess.py: SFT with replay-KL rows on the tiny model, run as one process or under
``accelerate launch``; the main process writes the loss curve and the adapter to ``OUT``.

    python tests/multiprocess_worker.py OUT PER_DEVICE_BATCH
"""

import json
import sys
from pathlib import Path

from datasets import Dataset, concatenate_datasets
from trl import SFTConfig, get_peft_config

from common.config import ModelArguments
from common.data import messages_to_prompt_completion
from common.hardware import is_main_process
from common.models import TINY_TEXT_ALIAS, load_causal_lm, load_tokenizer
from common.train import build_sft_trainer

TASK = [("What is the Team price?", "Team costs $9 per member."), ("Which key adds a sticky?", "Press N."),
        ("How long is the trial?", "The trial lasts 21 days."), ("Max editors?", "Up to 120 people.")]
REPLAY = [("What is the capital of France?", "Paris is the capital of France."),
          ("How many days are in a week?", "A week has seven days."),
          ("What color is the sky?", "The sky is blue on a clear day.")]


def main(out: Path, per_device_batch: int) -> None:
    task = Dataset.from_list([{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                              for q, a in TASK] * 2)
    task = task.map(messages_to_prompt_completion, remove_columns=task.column_names)
    task = task.add_column("replay", [False] * len(task))
    replay = Dataset.from_list([{"prompt": [{"role": "user", "content": q}],
                                 "completion": [{"role": "assistant", "content": a}], "replay": True}
                                for q, a in REPLAY] * 3)
    # this order puts a replay-only and a task-only batch of 2 rows on the processes in the first steps
    rows = concatenate_datasets([replay.select(range(2)), task.select(range(2)), task.select(range(2, 8)),
                                 replay.select(range(2, 9))])
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=per_device_batch, learning_rate=5e-3,
                     max_steps=4, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                     activation_checkpointing=False, seed=0, data_seed=0, disable_tqdm=True,
                     ddp_find_unused_parameters=False)
    model_args = ModelArguments(model_name_or_path=TINY_TEXT_ALIAS, lora_r=8, lora_alpha=16, lora_dropout=0.0)
    trainer = build_sft_trainer(load_causal_lm(model_args), load_tokenizer(TINY_TEXT_ALIAS), args, rows,
                                peft_config=get_peft_config(model_args), replay_kl_weight=1.0)
    trainer.train()
    trainer.save_model(str(out))
    if is_main_process():
        history = [{k: h[k] for k in ("loss", "replay_kl") if k in h} for h in trainer.state.log_history]
        (out / "history.json").write_text(json.dumps(history))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
