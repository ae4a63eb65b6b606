"""Scale-out on an existing engine: ``accelerate launch`` with ``configs/accelerate/multi_cpu.yaml`` (2 processes,
the gloo backend on this CPU).

Text: two processes x 2 rows must train like one process x 4 rows -- the same rows per optimizer step (accelerate
shards each global batch), the loss normalized by the answer tokens of the whole global batch
(``average_tokens_across_devices``), gradients averaged by DDP -- including the replay-KL loss, whose batches can
hold replay rows on one process and none on the other. Vision: two processes x 4 images must train like one
process x 4 images x 2 accumulation steps (BatchNorm normalizes each process's batch; ``SyncBatchNorm`` needs a
GPU). Dropout is off so that the runs are deterministic.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

# Under pytest-xdist (make test) these tests share one worker and run one at a time: two 2-process trainings at
# once on 2 cores would be slow, not wrong.
pytestmark = pytest.mark.xdist_group("accelerate-launch")

REPO = Path(__file__).resolve().parents[1]


def _launch() -> list:
    """``accelerate launch`` on a port free right now. A fixed port was once found taken in a fresh-clone run (by
    what was not recorded; the previous launch's rendezvous store is the likely one), and accelerate's fallback for
    a taken port then aborted both workers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            REPO / "configs/accelerate/multi_cpu.yaml", "--main_process_port", port]


def _run(cmd: list, timeout: int = 300) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _adapter_gap(a: Path, b: Path) -> float:
    x, y = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert x.keys() == y.keys()
    assert max(x[k].abs().max().item() for k in x if "lora_B" in k) > 0  # LoRA B starts at 0: training moved it
    return max((x[k] - y[k]).abs().max().item() for k in x)


def test_replay_kl_sft_on_two_processes_matches_one_process(tmp_path):
    worker = REPO / "tests" / "multiprocess_worker.py"
    _run([sys.executable, worker, tmp_path / "one", 4])
    _run([*_launch(), worker, tmp_path / "two", 2])
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    losses = [[h["loss"] for h in hist if "loss" in h] for hist in (one, two)]
    assert len(losses[0]) == len(losses[1]) == 4
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)  # the loss curve, step by step
    assert any("replay_kl" in h for h in two)
    assert _adapter_gap(tmp_path / "one", tmp_path / "two") < 1e-5


def test_a_recipe_under_accelerate_launch_writes_one_report(tmp_path):
    """The chatbot recipe end to end on two processes: both train, the main one evaluates and writes."""
    recipe = REPO / "usecase-chatbot"
    _run([*_launch(), recipe / "train.py", "--config", recipe / "config.smoke.yaml", "--output_dir", tmp_path / "run",
          "--per_device_train_batch_size", "2", "--export_merged", "false"])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["train"]["steps"] == 4 and report["metrics"]["after"]["answer_perplexity"] > 0
    assert (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_vision_trainer_on_two_processes_matches_one_process_with_accumulation(tmp_path):
    from common.paths import load_sibling

    prepare = load_sibling(REPO / "usecase-vision-defects" / "prepare_data.py", "prepare_data")
    data = prepare.generate(tmp_path / "data", prepare.GenerationArguments(
        generation_image_size=32, num_train_per_class=8, num_val_per_class=1, num_test_per_class=1))
    worker = REPO / "tests" / "multiprocess_vision_worker.py"
    _run([sys.executable, worker, data, tmp_path / "one", 4, 2])
    _run([*_launch(), worker, data, tmp_path / "two", 4, 1])
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    assert len(one) == len(two) == 4 and one[-1] < one[0]  # it learned
    assert one == pytest.approx(two, rel=1e-4)  # the loss curve, step by step
    x, y = (load_file(tmp_path / run / "model.safetensors") for run in ("one", "two"))
    gap = max((x[k] - y[k]).abs().max().item() for k in x if "running" not in k)
    assert gap < 1e-4  # weights; BatchNorm running statistics differ (DDP keeps rank 0's), used only at eval
