"""The accelerate launch configs in configs/accelerate/ load, and every key is one the installed accelerate knows."""

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_accelerate_config_is_valid(path):
    config = ClusterConfig.from_yaml_file(path)  # unknown top-level keys raise
    assert config.num_processes >= 2 and config.distributed_type in (DistributedType.MULTI_GPU, DistributedType.FSDP)
    options = {o for a in launch_command_parser()._actions for o in a.option_strings}
    for key in yaml.safe_load(path.read_text()).get("fsdp_config", {}):
        assert f"--{key}" in options, f"{path.name}: fsdp_config key {key!r} is not an accelerate launch option"


def test_fsdp_config_shards_per_decoder_layer():
    config = ClusterConfig.from_yaml_file(next(p for p in CONFIGS if p.stem == "fsdp_gpu"))
    assert config.distributed_type == DistributedType.FSDP and config.mixed_precision == "bf16"
    assert config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
