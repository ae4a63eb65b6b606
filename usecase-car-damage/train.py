"""Fine-tune one ImageNet backbone with four heads: car part, damage type, severity and repair cost.

    python usecase-car-damage/train.py                                   # config.yaml, CPU, minutes
    python usecase-car-damage/train.py --config usecase-car-damage/config.gpu.yaml
    python usecase-car-damage/train.py --data_dir my_claims/labels.csv --output_dir runs/my-claims

Steps: parse config -> load the cost table, generate / load the photos, validate them -> baseline (linear heads on
frozen ImageNet features) -> fine-tune backbone + heads with the weighted multi-task loss (HF Trainer) ->
evaluate both on held-out test (and validation) -> choose the cost method on validation -> report -> save.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from transformers import TrainerState, TrainingArguments, set_seed

from common import vision
from common.config import parse_config, to_dict
from common.errors import run_main
from common.hardware import detect, peak_memory_mb, training_precision
from common.paths import load_sibling, portable_path, usecase_name
from common.report import Stopwatch, write_report
from common.run_folder import claim
from common.train import resume_checkpoint
from common.vision import multitask as mt

HERE = Path(__file__).resolve().parent
prepare_data = load_sibling(__file__, "prepare_data")  # usecase folders are not packages: loaded by path
estimate = load_sibling(__file__, "estimate")
predict = load_sibling(__file__, "predict")


def evaluate(model, dataset, table, calibration: dict | None, coverage: float) -> tuple[dict, dict, dict]:
    """Per-head accuracy / macro-F1 / confusion and both cost methods. Without ``calibration`` (the validation
    split) the cost method and its range are chosen here; the test split gets the validation's.
    Returns ``(metrics, calibration, outputs)``."""
    outputs, speed = mt.predict_multitask(model, dataset)
    metrics = mt.multitask_metrics(outputs, dataset.targets, model.tasks)
    metrics = {k.replace("cost_", "cost_regression_"): v for k, v in metrics.items()}  # the head's own estimate
    metrics.update(estimate.severity_on_damaged(outputs, dataset.samples, table))
    if "cost" in dataset.samples[0].labels:
        true = np.array([s.labels["cost"] for s in dataset.samples])
        calibration = calibration or estimate.calibrate(outputs, true, table, coverage)
        metrics.update(estimate.cost_metrics(outputs, true, table, calibration))
        metrics["cost_method"] = calibration["method"]
    calibration = calibration or {"method": None, "methods": {}, "coverage": coverage}
    return {**metrics, "inference_img_per_s": speed}, calibration, outputs


def main(argv: list[str] | None = None) -> dict:
    # 1. Configuration: dataclass defaults < config.yaml < command-line flags (unknown keys are errors).
    data_args, gen_args, model_args, mt_args, args = parse_config(
        (prepare_data.CarDataArguments, prepare_data.GenerationArguments, vision.VisionModelArguments,
         estimate.MultiTaskArguments, TrainingArguments), argv, default_config=HERE / "config.yaml")
    vision.check_args(data_args, model_args, args)  # ranges and choices, before any data or model work
    set_seed(args.seed)  # before any model or head is built: the default torch seed differs per process
    out, clock = Path(args.output_dir), Stopwatch()

    # 2. Data: the cost table (label sets + prices), then every photo opened and every label checked BEFORE
    #    any model is loaded.
    table, splits, present = prepare_data.load_data(data_args, gen_args, seed=args.seed)
    print(f"heads {present}; images " + ", ".join(f"{k}={len(v)}" for k, v in splits.items()))
    backbone, norm = vision.load_backbone(model_args.model_name_or_path, 0)  # num_classes=0: pooled features
    tasks = estimate.build_tasks(table, present, splits["train"], mt_args)
    model = mt.MultiTaskModel(backbone, tasks, dropout=mt_args.head_dropout,
                              freeze_norm_stats=model_args.freeze_norm_stats)
    size = data_args.image_size
    tf = {train: prepare_data.build_transforms(size, norm["mean"], norm["std"], train, data_args.augment)
          for train in (True, False)}
    train_ds = mt.MultiTaskDataset(splits["train"], tasks, tf[True])
    probe_ds, val_ds, test_ds = (mt.MultiTaskDataset(splits[s], tasks, tf[False]) for s in ("train", "val", "test"))
    clock.lap("data")

    def scored(m):  # the same evaluation for the baseline and the fine-tuned model: validation, then test
        val_metrics, calibration, _ = evaluate(m, val_ds, table, None, mt_args.range_coverage)
        test_metrics, _, test_out = evaluate(m, test_ds, table, calibration, mt_args.range_coverage)
        return test_metrics, val_metrics, calibration, test_out

    # the output folder is this run's: its settings saved (a restart must match them), a second run locked out
    claim(out, to_dict(data_args, gen_args, model_args, mt_args, args))

    # 3. Baseline: linear heads on frozen ImageNet features (features computed once, cached), same loss.
    mt.fit_multitask_probe(model, probe_ds, args, model_args.probe_epochs, model_args.probe_learning_rate,
                           cache=out / "feature_cache")
    before, val_before, _, before_out = scored(model)
    print(f"baseline (linear probe): damage macro-F1 {before.get('damage_macro_f1', float('nan')):.3f}")
    clock.lap("baseline")

    # 4. Fine-tune backbone + heads (LP-FT: the heads start from the probe's) with the HF Trainer: best checkpoint
    #    by the validation score (mean of the heads' macro-F1 / within-20%), early stopping, resumable.
    model = mt.prepare_multitask(model, model_args.method, model_args)
    trainable, total = vision.trainable_parameters(model)
    trainer = mt.build_multitask_trainer(model, args, train_ds, val_ds, model_args.early_stopping_patience)
    resume = resume_checkpoint(args)  # --resume_from_checkpoint, else the newest checkpoint of a killed run
    start_epoch = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json")).epoch if resume else 0.0
    trainer.train(resume_from_checkpoint=resume)
    train = vision.train_throughput(trainer, len(train_ds), start_epoch)
    model = mt.merged(trainer.model)
    clock.lap("training")

    # 5. Evaluate the fine-tuned model exactly like the baseline (test chooses nothing; validation chooses the
    #    cost method and its range).
    after, val_after, calibration, after_out = scored(model)
    print(f"fine-tuned ({model_args.method}): damage macro-F1 {after.get('damage_macro_f1', float('nan')):.3f}, "
          f"severity accuracy {after.get('severity_accuracy', float('nan')):.3f}, "
          f"cost within 20% {after.get('cost_within_20pct', float('nan')):.3f} ({after.get('cost_method')})")
    clock.lap("after_evaluation")

    # 6. Robustness: the same held-out photos as phones and messaging apps leave them (JPEG, blur, noise, poor
    #    light, low resolution, a tilt), scored with the calibration fixed above -- on validation and on test.
    def corrupted_score(split):
        return lambda corrupt: evaluate(model, mt.MultiTaskDataset(
            vision.evenly_spaced(splits[split], model_args.robustness_max_images), tasks,
            vision.corrupted_transform(corrupt, tf[False])), table, calibration,
            mt_args.range_coverage)[0]
    robust_keys = [k for k in ("damage_macro_f1", "severity_accuracy", "cost_within_20pct") if k in after]
    robustness = {name: vision.corruption_report(corrupted_score(split), keys=robust_keys)
                  for name, split in (("validation", "val"), ("test", "test"))}
    print(f"robustness: worst on test {robustness['test']['worst']}")
    clock.lap("robustness")

    # 7. Save: safetensors + config.json (tasks, normalization, cost calibration) and the prices used.
    shutil.copy(table.source, out / "cost_table.csv")
    mt.save_multitask(model, out, norm, size, extra={
        "base_model": model_args.model_name_or_path, "method": model_args.method, "calibration": calibration,
        "gradcam_layer": model_args.gradcam_layer, "cam_method": model_args.cam_method,
        # what "small", "flat" and "soft" mean for this model (predict.py warns below it)
        "photo_ranges": vision.training_ranges([vision.load_rgb(x.source) for x in splits["train"]])})
    tests = [{"path": predict.run_relative(s.name, out), **s.labels} for s in splits["test"]]
    (out / "test_split.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tests))

    # 8. Report: report.json + REPORT.md, confusion matrices, the cost calibration plot, annotated examples.
    figures = []
    for task in (t for t in tasks if t.is_classification):
        for side, m in (("", after), ("_baseline", before)):
            name = f"confusion_{task.name}{side}.png"
            vision.plot_confusion(m["confusion"][task.name], task.classes, out / name,
                                  title=f"{task.name}: {'linear probe' if side else 'fine-tuned'} (held-out test)")
            figures.append(f"![{name}]({name})")
    if "cost" in present:
        true = np.array([s.labels["cost"] for s in test_ds.samples])
        for side, outputs in (("", after_out), ("_baseline", before_out)):
            estimate.plot_calibration(outputs, true, table, out / f"cost_calibration{side}.png",
                                      f"Cost: {'linear probe' if side else 'fine-tuned'} (held-out test)")
            figures.append(f"![cost calibration](cost_calibration{side}.png)")
    picks = [next(t for t in tests if t.get("damage") == d) for d in table.damages
             if any(t.get("damage") == d for t in tests)]
    examples = predict.explain(model, json.loads((out / "config.json").read_text()), table,
                               [predict.resolve_run_path(t["path"], out) for t in picks], out / "examples")
    rows = ["| true | predicted | estimate (method) | annotated |", "|---|---|---|---|"]
    rows += [f"| {t.get('part')} / {t.get('damage')} / {t.get('severity')} / {t.get('cost')} | {e.get('part')} / "
             f"{e.get('damage')} / {e.get('severity')} | {e['cost'].get('estimate')} ({e['cost'].get('method')}) | "
             f"![](examples/{Path(e['annotated']).name}) |" for e, t in zip(examples, picks)]
    clock.lap("export")
    config = to_dict(data_args, gen_args, model_args, mt_args)
    config["data_dir"] = portable_path(data_args.data_dir)  # no machine paths in a committed report
    config["cost_table"] = portable_path(data_args.cost_table)
    report = {
        "usecase": usecase_name(__file__), "model": model_args.model_name_or_path, "method": model_args.method,
        "hardware": detect().describe(training_precision(args)),
        "train": {"seconds": round(train["seconds"], 3), "throughput": {"value": round(train["img_per_s"], 1),
                  "unit": "img/s"}, "peak_memory_mb": round(peak_memory_mb(), 1), "images_seen": train["images"],
                  "trainable_parameters": trainable, "total_parameters": total, "image_size": size},
        "primary_metric": "damage_macro_f1" if "damage" in present else mt.selection_score.__name__,
        "metrics": {"before": before, "after": after},  # held-out test split
        "metrics_validation": {"before": val_before, "after": val_after},
        "cost_calibration": calibration, "loss_weights": {t.name: t.weight for t in tasks},
        "robustness": robustness,  # the fine-tuned model on corrupted copies of the held-out photos
        "data": {"heads": present, **{k: len(v) for k, v in splits.items()}},
        "config": config, "phases": clock.summary(),
    }
    if report["primary_metric"] not in after:  # no damage column: the mean head score is the primary metric
        for m in (before, after):
            m["selection_score"] = mt.selection_score(m, tasks)
    sections = [("Confusion matrices and cost calibration (held-out test)", "\n\n".join(figures)),
                ("Example estimates", "\n".join(rows)),
                ("Robustness: the held-out photos corrupted (fine-tuned model)", "\n\n".join(
                    vision.robustness_section(robustness, k, k.replace("_", " ")) for k in robust_keys))]
    write_report(out, report, trainer.state.log_history, sections)
    print(f"report: {out / 'REPORT.md'}")
    return report["metrics"]


if __name__ == "__main__":
    run_main(main)
