"""Fine-tune an ImageNet backbone to classify (and localize) manufacturing defects.

    python usecase-vision-defects/train.py                                   # config.yaml, CPU, minutes
    python usecase-vision-defects/train.py --config usecase-vision-defects/config.gpu.yaml
    python usecase-vision-defects/train.py --method full --output_dir runs/defects-full

Steps: parse config -> prepare + validate data -> baseline (linear probe on frozen ImageNet features) ->
fine-tune (LoRA / full) -> evaluate both on the held-out test split (and on validation) -> report -> save.
Paths in the config are relative to the repository (or the working directory); the report stores none absolute.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerState, TrainingArguments, set_seed

from common import vision
from common.config import parse_config, to_dict
from common.errors import run_main
from common.hardware import detect, peak_memory_mb, training_precision
from common.paths import load_sibling, portable_path, repo_path, usecase_name
from common.report import Stopwatch, write_report
from common.run_folder import claim
from common.train import resume_checkpoint

HERE = Path(__file__).resolve().parent
predict = load_sibling(__file__, "predict")  # usecase folders are not packages: siblings are loaded by path
prepare_data = load_sibling(__file__, "prepare_data")


def _portable_model(name_or_path: str) -> str:
    """A local model folder as a repository-relative path (else its name); aliases and hub names unchanged."""
    return portable_path(repo_path(name_or_path)) if repo_path(name_or_path).is_dir() else name_or_path


def main(argv: list[str] | None = None) -> dict:
    # 1. Configuration: dataclass defaults < config.yaml < command-line flags (unknown keys are errors).
    data_args, model_args, gen_args, args = parse_config(
        (vision.VisionDataArguments, vision.VisionModelArguments, prepare_data.GenerationArguments,
         TrainingArguments),
        argv, default_config=HERE / "config.yaml")
    vision.check_args(data_args, model_args, args)  # ranges and choices, before any data or model work
    set_seed(args.seed)  # before any model or head is built: the default torch seed differs per process
    out, clock = Path(args.output_dir), Stopwatch()  # clock: wall time per phase, in the report

    # 2. Data: generate (only the recipe's own synthetic set), or take yours; then open every image and check
    #    every label BEFORE training.
    if not data_args.dataset_name:
        data_args.data_dir = prepare_data.resolve_data_dir(data_args.data_dir, gen_args)
    splits = vision.load_splits(data_args, seed=args.seed)
    classes = vision.validate_splits(splits, data_args.labels, data_args.max_problems_shown)
    print(f"classes {classes}; images " + ", ".join(f"{k}={len(v)}" for k, v in splits.items()))

    backbone, norm = vision.load_backbone(model_args.model_name_or_path, len(classes))
    vision.check_cam_layer(backbone, model_args.gradcam_layer)  # a typo fails now, not after training
    size = data_args.image_size
    eval_tf = vision.build_transforms(size, norm["mean"], norm["std"], train=False)
    train_tf = vision.build_transforms(size, norm["mean"], norm["std"], train=True, augment=data_args.augment)
    train_ds = vision.ImageDataset(splits["train"], classes, train_tf)
    probe_ds, val_ds, test_ds = (vision.ImageDataset(splits[s], classes, eval_tf) for s in ("train", "val", "test"))
    clock.lap("data")

    # the output folder is this run's: its settings saved (a restart must match them), a second run locked out
    claim(out, to_dict(data_args, model_args, gen_args, args))

    # 3. Baseline: a linear classifier on frozen ImageNet features (features computed once, cached).
    start = time.perf_counter()
    vision.fit_linear_probe(backbone, probe_ds, args, model_args, cache=out / "feature_cache")
    probe_seconds = time.perf_counter() - start
    before = vision.evaluate_classifier(backbone, test_ds, classes, throughput=False)
    val_before = vision.evaluate_classifier(backbone, val_ds, classes, throughput=False)
    cam = {"layer": model_args.gradcam_layer, "method": model_args.cam_method, "smooth": model_args.cam_smooth}
    cam_before = vision.localization_score(backbone, test_ds, classes, **cam)
    before["gradcam_peak_in_box"] = cam_before["gradcam_peak_in_box"]
    print(f"baseline (linear probe): macro-F1 {before['macro_f1']:.3f}")
    clock.lap("baseline")

    # 4. Fine-tune with the HF Trainer: best checkpoint by validation macro-F1, early stopping, resumable.
    if not model_args.init_head_from_probe:
        backbone.reset_classifier(len(classes))
    model = vision.prepare_for_method(backbone, model_args)
    trainable, total = vision.trainable_parameters(model)
    trainer = None
    if model_args.method == "linear_probe":  # the probe above is the whole training
        train = {"seconds": probe_seconds, "images": model_args.probe_epochs * len(probe_ds),
                 "img_per_s": len(probe_ds) / probe_seconds}
    else:
        classifier = vision.ImageClassifier(model, freeze_norm_stats=model_args.freeze_norm_stats)
        trainer = vision.build_trainer(classifier, args, train_ds, val_ds, model_args.early_stopping_patience)
        # resumes from --resume_from_checkpoint, else from the newest checkpoint in output_dir (a killed run)
        resume = resume_checkpoint(args)
        start_epoch = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json")).epoch if resume else 0.0
        trainer.train(resume_from_checkpoint=resume)
        train = vision.train_throughput(trainer, len(train_ds), start_epoch)
    model = vision.unwrap(trainer.model if trainer else model)
    clock.lap("training")

    # 5. Evaluate the fine-tuned model exactly like the baseline (same held-out test split; inference speed after
    #    a warm-up batch), and both on the validation split too: defaults are chosen there, never on test.
    after = vision.evaluate_classifier(model, test_ds, classes)
    val_after = vision.evaluate_classifier(model, val_ds, classes, throughput=False)
    cam_after = vision.localization_score(model, test_ds, classes, **cam)
    cam_val_after = vision.localization_score(model, val_ds, classes, **cam)
    after["gradcam_peak_in_box"] = cam_after["gradcam_peak_in_box"]
    print(f"fine-tuned ({model_args.method}): macro-F1 {after['macro_f1']:.3f}; "
          f"heatmap peak ({model_args.cam_method}) in the defect box: {after['gradcam_peak_in_box']:.0%}")
    clock.lap("after_evaluation")

    # 6. Robustness: the same held-out photos as phones and messaging apps leave them (JPEG, blur, noise, poor
    #    light, low resolution, a tilt) -- on validation (where augmentation is chosen) and on test.
    def corrupted_score(split):
        return lambda corrupt: vision.evaluate_classifier(
            model, vision.ImageDataset(vision.evenly_spaced(splits[split], model_args.robustness_max_images),
                                       classes, vision.corrupted_transform(corrupt, eval_tf)),
            classes, throughput=False)
    robustness = {name: vision.corruption_report(corrupted_score(split), keys=("macro_f1",))
                  for name, split in (("validation", "val"), ("test", "test"))}
    print(f"robustness: worst on test {robustness['test']['worst']['macro_f1']}")
    clock.lap("robustness")

    # 7. Save: safetensors + config.json (labels, normalization, resolution) that predict.py rebuilds from.
    vision.save_classifier(model, out, classes, norm, size,
                           extra={"base_model": _portable_model(model_args.model_name_or_path),
                                  "method": model_args.method, "gradcam_layer": model_args.gradcam_layer,
                                  "cam_method": model_args.cam_method, "cam_smooth": model_args.cam_smooth,
                                  # what "small", "flat" and "soft" mean for this model (predict.py warns below it)
                                  "photo_ranges": vision.training_ranges([vision.load_rgb(x.source)
                                                                          for x in splits["train"]])})
    # paths relative to the run folder or the repository (predict.py --examples resolves them back)
    tests = [{"path": predict.run_relative(s.name, out), "label": s.label, "box": s.box} for s in splits["test"]
             if isinstance(s.source, (str, Path))]
    (out / "test_split.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tests))

    # 8. Report: report.json + REPORT.md with the confusion matrix and example heatmaps.
    vision.plot_confusion(after["confusion_matrix"], classes, out / "confusion_matrix.png")
    vision.plot_confusion(before["confusion_matrix"], classes, out / "confusion_matrix_baseline.png",
                          title="Baseline (linear probe) confusion matrix")
    picks = [next(t for t in tests if t["label"] == c) for c in classes if any(t["label"] == c for t in tests)]
    examples = predict.explain(model, json.loads((out / "config.json").read_text()),
                               [predict.resolve_run_path(t["path"], out) for t in picks], out / "examples")
    rows = ["| image | true | predicted | confidence | heatmap |", "|---|---|---|---|---|"]
    rows += [f"| {Path(e['image']).name} | {t['label']} | {e['class']} | {e['confidence']:.2f} | "
             f"![](examples/{Path(e['heatmap']).name}) |" for e, t in zip(examples, picks)]
    clock.lap("export")
    config = to_dict(data_args, model_args, gen_args)
    config["data_dir"] = portable_path(data_args.data_dir, out)  # no machine paths in a committed report
    config["model_name_or_path"] = _portable_model(model_args.model_name_or_path)
    report = {
        "usecase": usecase_name(__file__), "model": config["model_name_or_path"], "method": model_args.method,
        "hardware": detect().describe(training_precision(args)),  # what this run trained in
        "train": {"seconds": round(train["seconds"], 3), "throughput": {"value": round(train["img_per_s"], 1),
                  "unit": "img/s"}, "peak_memory_mb": round(peak_memory_mb(), 1), "images_seen": train["images"],
                  "trainable_parameters": trainable, "total_parameters": total, "image_size": size},
        "primary_metric": "macro_f1",
        "metrics": {"before": before, "after": after},  # held-out test split
        "metrics_validation": {side: {k: m[k] for k in ("accuracy", "macro_f1")}
                               for side, m in (("before", val_before), ("after", val_after))},
        "inference": {"value": round(after["inference_img_per_s"], 1), "unit": "img/s"},
        "localization": {"before": cam_before, "after": cam_after, "validation_after": cam_val_after},
        "robustness": robustness,  # macro-F1 of the fine-tuned model on corrupted copies of the held-out photos
        "data": {"classes": classes, **{k: len(v) for k, v in splits.items()}},
        "config": config,
        "phases": clock.summary(),
    }
    sections = [("Confusion matrix (fine-tuned, held-out test)", "![confusion matrix](confusion_matrix.png)\n\n"
                 "Baseline: ![baseline confusion matrix](confusion_matrix_baseline.png)"),
                (f"Example predictions with {model_args.cam_method} heatmaps", "\n".join(rows)),
                ("Robustness: the held-out photos corrupted (fine-tuned model)",
                 vision.robustness_section(robustness, "macro_f1", "macro-F1"))]
    write_report(out, report, trainer.state.log_history if trainer else None, sections)
    print(f"report: {out / 'REPORT.md'}")
    return report["metrics"]


if __name__ == "__main__":
    run_main(main)
