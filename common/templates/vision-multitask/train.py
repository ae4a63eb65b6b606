"""{{title}}: fine-tune one ImageNet backbone with several heads (classes and numbers), against linear heads.

    python {{folder}}/train.py --output_dir runs/{{name}}                     # config.yaml, CPU, minutes
    python {{folder}}/train.py --data_dir my_labels.csv --class_columns part damage --value_columns cost \
        --output_dir runs/{{name}}-mine                                         # your own images and labels
    python {{folder}}/train.py --config {{folder}}/config.smoke.yaml --output_dir /tmp/{{name}}-smoke

Steps: parse config -> prepare and validate the images and labels -> baseline (linear heads on frozen ImageNet
features, the same loss) -> fine-tune backbone + heads with the weighted multi-task loss (HF Trainer, best checkpoint
by the validation score, resume if killed) -> evaluate both on the held-out test split (and validation) -> report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import TrainerState, TrainingArguments, set_seed

from common import vision
from common.config import parse_config, to_dict
from common.errors import ConfigError, run_main
from common.hardware import detect, peak_memory_mb, training_precision
from common.paths import load_sibling, portable_path, run_relative, usecase_name
from common.report import Stopwatch, write_report
from common.run_folder import claim
from common.train import resume_checkpoint
from common.vision import multitask as mt

HERE = Path(__file__).resolve().parent
prepare = load_sibling(__file__, "prepare_data")  # the synthetic stand-in, or your labels CSV, checked


@dataclass
class HeadArguments:
    """The heads: one per label column. The loss is ``sum weight * loss`` (choose the weights on validation)."""

    class_columns: list[str] = field(default_factory=lambda: ["shape", "colour"],
                                     metadata={"help": "Classification heads (their classes: the training labels)."})
    value_columns: list[str] = field(default_factory=lambda: ["size"], metadata={"help": "Regression heads."})
    head_weights: list[float] | None = field(default=None, metadata={
        "help": "Loss weight per head, class columns then value columns (default: 1 each)."})
    head_dropout: float = field(default=0.0, metadata={"help": "Dropout on the pooled features before the heads."})


def build_tasks(args: HeadArguments, train: list[mt.MultiSample]) -> list[mt.Task]:
    """One :class:`~common.vision.multitask.Task` per column; classes and value scaling from the training split."""
    columns = [*args.class_columns, *args.value_columns]
    weights = args.head_weights or [1.0] * len(columns)
    if len(weights) != len(columns):
        raise ConfigError(f"head_weights has {len(weights)} values for {len(columns)} heads {columns}")
    tasks = [mt.Task(c, classes=sorted({s.labels[c] for s in train}), weight=w)
             for c, w in zip(args.class_columns, weights)]
    for c, w in zip(args.value_columns, weights[len(args.class_columns):]):
        values = np.array([s.labels[c] for s in train])
        tasks.append(mt.Task(c, weight=w, mean=float(values.mean()), std=float(max(values.std(), 1e-3))))
    return tasks


def evaluate(model: mt.MultiTaskModel, dataset: mt.MultiTaskDataset) -> dict:
    """Per head: accuracy and macro-F1, or MAE and the share within +-20%; ``score``: their mean (selection)."""
    outputs, speed = mt.predict_multitask(model, dataset)
    metrics = mt.multitask_metrics(outputs, dataset.targets, model.tasks)
    return {"score": mt.selection_score(metrics, model.tasks), **metrics, "inference_img_per_s": speed}


def main(argv: list[str] | None = None) -> dict:
    # 1. Configuration: dataclass defaults < config.yaml < command-line flags (unknown keys are errors)
    data_args, head_args, model_args, gen_args, args = parse_config(
        (vision.VisionDataArguments, HeadArguments, vision.VisionModelArguments, prepare.GenerationArguments,
         TrainingArguments), argv, default_config=HERE / "config.yaml")
    vision.check_args(data_args, model_args, args)  # ranges and choices, before any data or model work
    set_seed(args.seed)
    out, clock = Path(args.output_dir), Stopwatch()  # clock: wall time per phase, in the report

    # 2. Data: every image opened and every label checked before any model loads
    labels_file = prepare.resolve_labels_file(data_args.data_dir, gen_args)
    splits = prepare.load_samples(labels_file, head_args.class_columns, head_args.value_columns,
                                  data_args.max_problems_shown)
    tasks = build_tasks(head_args, splits["train"])
    for split in ("val", "test"):  # a class the training split never shows cannot be learned
        for task in (t for t in tasks if t.is_classification):
            unseen = sorted({s.labels[task.name] for s in splits[split]} - set(task.classes))
            if unseen:
                raise ConfigError(f"{labels_file}: {task.name} {unseen} in the {split} split but not in train")
    print(f"heads {[t.name for t in tasks]}; images " + ", ".join(f"{k}={len(v)}" for k, v in splits.items()))
    backbone, norm = vision.load_backbone(model_args.model_name_or_path, 0)  # num_classes=0: pooled features
    model = mt.MultiTaskModel(backbone, tasks, dropout=head_args.head_dropout,
                              freeze_norm_stats=model_args.freeze_norm_stats)
    size = data_args.image_size
    tf = {train: vision.build_transforms(size, norm["mean"], norm["std"], train, data_args.augment)
          for train in (True, False)}
    train_ds = mt.MultiTaskDataset(splits["train"], tasks, tf[True])
    probe_ds, val_ds, test_ds = (mt.MultiTaskDataset(splits[s], tasks, tf[False]) for s in ("train", "val", "test"))
    claim(out, to_dict(data_args, head_args, model_args, gen_args, args))  # a restart must use the same settings
    clock.lap("data")

    # 3. Baseline: linear heads on frozen ImageNet features (computed once, cached), the same loss
    mt.fit_multitask_probe(model, probe_ds, args, model_args.probe_epochs, model_args.probe_learning_rate,
                           cache=out / "feature_cache")
    before, val_before = evaluate(model, test_ds), evaluate(model, val_ds)
    print(f"baseline (linear heads): score {before['score']:.3f}")
    clock.lap("baseline")

    # 4. Fine-tune backbone + heads, starting from the probe's heads (LP-FT)
    model = mt.prepare_multitask(model, model_args.method, model_args)
    trainable, total = vision.trainable_parameters(model)
    trainer = mt.build_multitask_trainer(model, args, train_ds, val_ds, model_args.early_stopping_patience)
    resume = resume_checkpoint(args)  # --resume_from_checkpoint, else the newest checkpoint of a killed run
    start_epoch = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json")).epoch if resume else 0.0
    trainer.train(resume_from_checkpoint=resume)
    train = vision.train_throughput(trainer, len(train_ds), start_epoch)
    model = mt.merged(trainer.model)
    clock.lap("training")

    # 5. The same evaluation on the fine-tuned model
    after, val_after = evaluate(model, test_ds), evaluate(model, val_ds)
    print(f"fine-tuned ({model_args.method}): score {after['score']:.3f}")
    clock.lap("after_evaluation")

    # 6. Save: safetensors + config.json (the heads, normalization, resolution) that predict.py rebuilds from
    mt.save_multitask(model, out, norm, size, extra={"base_model": model_args.model_name_or_path,
                                                     "method": model_args.method})
    tests = [{"path": run_relative(s.name, out), **s.labels} for s in splits["test"]]
    (out / "test_split.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tests))
    figures = []
    for task in (t for t in tasks if t.is_classification):
        vision.plot_confusion(after["confusion"][task.name], task.classes, out / f"confusion_{task.name}.png",
                              title=f"{task.name}: fine-tuned (held-out test)")
        figures.append(f"![{task.name}](confusion_{task.name}.png)")
    clock.lap("export")

    # 7. Report
    config = to_dict(data_args, head_args, model_args, gen_args)
    config["data_dir"] = portable_path(labels_file)  # no machine paths in a committed report
    report = {
        "usecase": usecase_name(__file__), "model": model_args.model_name_or_path, "method": model_args.method,
        "hardware": detect().describe(training_precision(args)),
        "train": {"seconds": round(train["seconds"], 3), "throughput": {"value": round(train["img_per_s"], 1),
                  "unit": "img/s"}, "peak_memory_mb": round(peak_memory_mb(), 1), "images_seen": train["images"],
                  "trainable_parameters": trainable, "total_parameters": total, "image_size": size},
        "primary_metric": "score",
        "metrics": {"before": before, "after": after},  # held-out test split; before = the linear heads
        "metrics_validation": {"before": val_before, "after": val_after},
        "scoring": "score: mean of every classification head's macro-F1 and every regression head's share of "
                   "predictions within +-20% of the truth (the validation score also picks the best checkpoint)",
        "loss_weights": {t.name: t.weight for t in tasks},
        "data": {"heads": [t.name for t in tasks], **{k: len(v) for k, v in splits.items()}},
        "config": config, "phases": clock.summary(),
    }
    write_report(out, report, trainer.state.log_history,
                 [("Confusion matrices (fine-tuned, held-out test)", "\n\n".join(figures))])
    print(f"report: {out / 'REPORT.md'}")
    return report["metrics"]


if __name__ == "__main__":
    run_main(main)
