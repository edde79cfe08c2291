"""Model loaders: built-in names, diffusers UNet config files, Python factories, and their errors."""
import json
import sys

import pytest
import torch

from harness.models import loaders
from harness.models.configs import TINY_UNET
from harness.models.patch import FLAG_SCOPE, apply_flags, flag_applies, flag_coverage
from harness.models.unet import build_unet, count_parameters, example_inputs
from harness.protocol import JobSpec, ModelRef
from harness.suite import SuiteError, load_suite
from harness.variants import LADDER

TINY_MD = "harness.models.mobilediffusion:build_tiny_unet"


@pytest.fixture()
def factory_module(tmp_path, monkeypatch):
    """A user package on sys.path with good and bad factories."""
    (tmp_path / "userfactories.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "class NoAttn(nn.Module):\n"
        "    input_shapes = {'sample': (2, 4, 8, 8), 'timestep': (), 'context': (2, 3, 5)}\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(4, 4, 3, padding=1)\n"
        "        self.norm = nn.GroupNorm(2, 4)\n"
        "    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=False):\n"
        "        return (self.norm(self.conv(sample)),)\n"
        "def build(seed=0):\n"
        "    return NoAttn()\n"
        "def not_a_module():\n"
        "    return 42, {}\n"
        "def bad_shapes():\n"
        "    m = NoAttn(); return m, {'sample': (2, 4, 8, 8)}\n"
        "def plain_forward():\n"
        "    return nn.Linear(2, 2), NoAttn.input_shapes\n"
        "VALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userfactories"
    sys.modules.pop("userfactories", None)


def test_model_ref_exactly_one():
    assert ModelRef().name == "sd14" and ModelRef().kind == "builtin"
    ref = ModelRef(factory=TINY_MD)
    assert ref.kind == "factory" and ref.name == f"factory:{TINY_MD}"
    assert ModelRef.model_validate_json(ref.model_dump_json()) == ref  # a JobSpec round-trips
    with pytest.raises(ValueError, match="exactly one of name"):
        ModelRef(name="tiny", factory=TINY_MD)
    with pytest.raises(ValueError, match="exactly one of name"):
        ModelRef(unet_config="a.json", factory=TINY_MD)


def test_builtin_inputs_unchanged_by_ref():
    a, b = example_inputs("tiny"), example_inputs(ModelRef(name="tiny"))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (2, 4, 16, 16) and a[2].shape == (2, 8, 32)


def test_unet_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class_name": "UNet2DConditionModel", **TINY_UNET}))
    ref = ModelRef(unet_config=str(path))
    assert ref.name == "config:config"
    unet = build_unet(ref, None, 0)
    assert count_parameters(unet) == count_parameters(build_unet("tiny"))
    sample, t, ctx = example_inputs(ref)
    assert sample.shape == (2, 4, 16, 16) and ctx.shape == (2, 77, 32)
    assert unet(sample, t, encoder_hidden_states=ctx, return_dict=False)[0].shape == sample.shape


def test_unet_config_errors(tmp_path):
    with pytest.raises(loaders.ModelLoadError, match="not found.*diffusers UNet config.json"):
        loaders.read_unet_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(loaders.ModelLoadError, match="not valid JSON"):
        loaders.read_unet_config(bad)
    bad.write_text(json.dumps({"in_channels": 4}))
    with pytest.raises(loaders.ModelLoadError, match="no integer sample_size.*add"):
        loaders.read_unet_config(bad)


def test_suite_model_errors(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nmodel:\n  unet_config: nowhere/config.json\n")
    with pytest.raises(SuiteError, match=r"s.yaml:2: model: model.unet_config .*not found"):
        load_suite(suite)
    suite.write_text("name: s\nmodel:\n  factory: 'no_such_pkg.mod:build'\n")
    with pytest.raises(SuiteError, match="does not import.*PYTHONPATH"):
        load_suite(suite)
    suite.write_text("name: s\nmodel:\n  name: tiny\n  factory: 'harness.models.mobilediffusion:build_tiny_unet'\n")
    with pytest.raises(SuiteError, match="exactly one of name"):
        load_suite(suite)
    suite.write_text("name: s\nmodel: nosuch\n")
    with pytest.raises(SuiteError, match="unknown model 'nosuch'; known models: sd14, tiny"):
        load_suite(suite)


def test_factory_path_errors(factory_module):
    with pytest.raises(loaders.ModelLoadError, match="not 'package.module:function'"):
        loaders.load_factory("userfactories.build")
    with pytest.raises(loaders.ModelLoadError, match="has no attribute 'nope'.*build"):
        loaders.load_factory(f"{factory_module}:nope")
    with pytest.raises(loaders.ModelLoadError, match="is a int, not callable"):
        loaders.load_factory(f"{factory_module}:VALUE")
    with pytest.raises(loaders.ModelLoadError, match="returned a int as the model.*torch.nn.Module"):
        loaders.call_factory(f"{factory_module}:not_a_module")
    with pytest.raises(loaders.ModelLoadError, match="exactly the keys sample, timestep, context"):
        loaders.call_factory(f"{factory_module}:bad_shapes")
    with pytest.raises(loaders.ModelLoadError, match="forward must accept"):
        loaders.call_factory(f"{factory_module}:plain_forward")


def test_factory_with_input_shapes_attribute_and_na_flags(factory_module):
    ref = ModelRef(factory=f"{factory_module}:build")
    unet = build_unet(ref, None, 0)
    sample, t, ctx = example_inputs(ref)
    assert sample.shape == (2, 4, 8, 8) and ctx.shape == (2, 3, 5) and t.shape == ()
    cov = flag_coverage(unet)
    na = [f for f in FLAG_SCOPE if not flag_applies(cov, f)]
    assert na == ["softmax", "attention"]  # no attention blocks in this model
    counts = apply_flags(unet, dict(LADDER)["+winograd"])
    assert counts["conv3x3_winograd"] == 1 and counts["groupnorm"] == 1
    assert unet(sample, t, encoder_hidden_states=ctx, return_dict=False)[0].shape == sample.shape


def test_mobilediffusion_like_design_on_meta():
    """The full-size factory, on the meta device (no weight memory): parameters and block placement."""
    from diffusers.models.attention_processor import Attention

    from harness.models import mobilediffusion as md

    with torch.device("meta"):
        unet, shapes = md.build_unet()
    assert count_parameters(unet) == md.MOBILEDIFFUSION_LIKE_PARAMS
    assert 400e6 <= md.MOBILEDIFFUSION_LIKE_PARAMS <= 520e6
    assert shapes == {"sample": (2, 4, 64, 64), "timestep": (), "context": (2, 77, 768)}
    # No attention at the highest resolution (first down block, last up block).
    assert not any(isinstance(m, Attention) for m in unet.down_blocks[0].modules())
    assert not any(isinstance(m, Attention) for m in unet.up_blocks[-1].modules())
    # Separable convolutions in the innermost blocks, plain 3x3 convs elsewhere.
    assert any(isinstance(m, md.SeparableConv2d) for m in unet.mid_block.modules())
    assert not any(isinstance(m, md.SeparableConv2d) for m in unet.down_blocks[0].modules())


def test_mobilediffusion_tiny_runs_patched(tmp_path):
    ref = ModelRef(factory=TINY_MD)
    inputs = example_inputs(ref)
    plain = build_unet(ref, None, 0)
    expected = plain(*inputs[:2], encoder_hidden_states=inputs[2], return_dict=False)[0]
    patched = build_unet(ref, None, 0)
    counts = apply_flags(patched, dict(LADDER)["+winograd"])
    assert counts["attention"] > 0 and counts["conv3x3_winograd"] > 0
    out = patched(*inputs[:2], encoder_hidden_states=inputs[2], return_dict=False)[0]
    rel = ((out - expected).abs().max() / expected.abs().max()).item()
    assert rel < 1e-3


def test_unet_iteration_records_na_flags(factory_module, tmp_path, monkeypatch):
    """The workload runs a factory model and records which flags touch nothing in it."""
    from harness.workloads.unet_iteration import run_torch

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    spec = JobSpec(job_id="j", run_id="r", device="host", variant="+flash_attention",
                   model=ModelRef(factory=f"{factory_module}:build"),
                   flags=dict(LADDER)["+flash_attention"].to_dict(),
                   measure={"warmup_runs": 0, "iterations": 1, "max_seconds": 5})
    result: dict = {"extra": {}}
    run_torch(spec, result)
    assert result["execution"]["na_flags"] == ["softmax", "attention"]
    assert result["check"].passed and len(result["samples_ms"]) >= 1
