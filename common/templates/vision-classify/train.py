"""{{title}}: fine-tune an ImageNet backbone to classify images, measured against a linear-probe baseline.

    python {{folder}}/train.py --output_dir runs/{{name}}                     # config.yaml, CPU, minutes
    python {{folder}}/train.py --data_dir my_photos/ --output_dir runs/{{name}}-mine   # your own images
    python {{folder}}/train.py --config {{folder}}/config.smoke.yaml --output_dir /tmp/{{name}}-smoke

Steps: parse config -> prepare and validate the images -> baseline (a linear classifier on frozen ImageNet features)
-> fine-tune (LoRA or full, HF Trainer, best checkpoint by validation macro-F1, resume if killed) -> evaluate both on
the held-out test split (and on validation) -> save -> report (report.json, REPORT.md, confusion matrices).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerState, TrainingArguments, set_seed

from common import vision
from common.config import parse_config, to_dict
from common.errors import run_main
from common.hardware import detect, peak_memory_mb, training_precision
from common.paths import load_sibling, portable_path, run_relative, usecase_name
from common.report import Stopwatch, write_report
from common.run_folder import claim
from common.train import resume_checkpoint

HERE = Path(__file__).resolve().parent
prepare = load_sibling(__file__, "prepare_data")  # the synthetic stand-in, or your images as they are


def main(argv: list[str] | None = None) -> dict:
    # 1. Configuration: dataclass defaults < config.yaml < command-line flags (unknown keys are errors)
    data_args, model_args, gen_args, args = parse_config(
        (vision.VisionDataArguments, vision.VisionModelArguments, prepare.GenerationArguments, TrainingArguments),
        argv, default_config=HERE / "config.yaml")
    vision.check_args(data_args, model_args, args)  # ranges and choices, before any data or model work
    set_seed(args.seed)
    out, clock = Path(args.output_dir), Stopwatch()  # clock: wall time per phase, in the report

    # 2. Data: every image opened and every label checked before training
    if not data_args.dataset_name:
        data_args.data_dir = prepare.resolve_data_dir(data_args.data_dir, gen_args)
    splits = vision.load_splits(data_args, seed=args.seed)
    classes = vision.validate_splits(splits, data_args.labels, data_args.max_problems_shown)
    print(f"classes {classes}; images " + ", ".join(f"{k}={len(v)}" for k, v in splits.items()))
    backbone, norm = vision.load_backbone(model_args.model_name_or_path, len(classes))
    size = data_args.image_size
    eval_tf = vision.build_transforms(size, norm["mean"], norm["std"], train=False)
    train_tf = vision.build_transforms(size, norm["mean"], norm["std"], train=True, augment=data_args.augment)
    train_ds = vision.ImageDataset(splits["train"], classes, train_tf)
    probe_ds, val_ds, test_ds = (vision.ImageDataset(splits[s], classes, eval_tf) for s in ("train", "val", "test"))
    claim(out, to_dict(data_args, model_args, gen_args, args))  # this run's folder: a restart must match it
    clock.lap("data")

    # 3. Baseline: a linear classifier on frozen ImageNet features (features computed once, cached)
    vision.fit_linear_probe(backbone, probe_ds, args, model_args, cache=out / "feature_cache")
    before = vision.evaluate_classifier(backbone, test_ds, classes, throughput=False)
    val_before = vision.evaluate_classifier(backbone, val_ds, classes, throughput=False)
    print(f"baseline (linear probe): macro-F1 {before['macro_f1']:.3f}")
    clock.lap("baseline")

    # 4. Fine-tune from the probe's head (LP-FT) with the HF Trainer
    if not model_args.init_head_from_probe:
        backbone.reset_classifier(len(classes))
    model = vision.prepare_for_method(backbone, model_args)
    trainable, total = vision.trainable_parameters(model)
    classifier = vision.ImageClassifier(model, freeze_norm_stats=model_args.freeze_norm_stats)
    trainer = vision.build_trainer(classifier, args, train_ds, val_ds, model_args.early_stopping_patience)
    resume = resume_checkpoint(args)  # --resume_from_checkpoint, else the newest checkpoint of a killed run
    start_epoch = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json")).epoch if resume else 0.0
    trainer.train(resume_from_checkpoint=resume)
    train = vision.train_throughput(trainer, len(train_ds), start_epoch)
    model = vision.unwrap(trainer.model)
    clock.lap("training")

    # 5. The same evaluation on the fine-tuned model: the held-out test split, and validation
    after = vision.evaluate_classifier(model, test_ds, classes)
    val_after = vision.evaluate_classifier(model, val_ds, classes, throughput=False)
    print(f"fine-tuned ({model_args.method}): macro-F1 {after['macro_f1']:.3f}")
    clock.lap("after_evaluation")

    # 6. Save: safetensors + config.json (labels, normalization, resolution) that predict.py rebuilds from
    vision.save_classifier(model, out, classes, norm, size,
                           extra={"base_model": model_args.model_name_or_path, "method": model_args.method})
    tests = [{"path": run_relative(s.name, out), "label": s.label} for s in splits["test"]
             if isinstance(s.source, (str, Path))]
    (out / "test_split.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tests))
    vision.plot_confusion(after["confusion_matrix"], classes, out / "confusion_matrix.png")
    clock.lap("export")

    # 7. Report
    config = to_dict(data_args, model_args, gen_args)
    config["data_dir"] = portable_path(data_args.data_dir, out)  # no machine paths in a committed report
    report = {
        "usecase": usecase_name(__file__), "model": model_args.model_name_or_path, "method": model_args.method,
        "hardware": detect().describe(training_precision(args)),
        "train": {"seconds": round(train["seconds"], 3), "throughput": {"value": round(train["img_per_s"], 1),
                  "unit": "img/s"}, "peak_memory_mb": round(peak_memory_mb(), 1), "images_seen": train["images"],
                  "trainable_parameters": trainable, "total_parameters": total, "image_size": size},
        "primary_metric": "macro_f1",
        "metrics": {"before": before, "after": after},  # held-out test split; before = the linear probe
        "metrics_validation": {side: {k: m[k] for k in ("accuracy", "macro_f1")}
                               for side, m in (("before", val_before), ("after", val_after))},
        "data": {"classes": classes, **{k: len(v) for k, v in splits.items()}},
        "config": config, "phases": clock.summary(),
    }
    write_report(out, report, trainer.state.log_history,
                 [("Confusion matrix (fine-tuned, held-out test)", "![confusion matrix](confusion_matrix.png)")])
    print(f"report: {out / 'REPORT.md'}")
    return report["metrics"]


if __name__ == "__main__":
    run_main(main)
