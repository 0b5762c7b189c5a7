"""Loading: both config dialects, shards, prefixes; clear errors naming the file for bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import minipss
from minipss.model.families import from_hf
from builders import copy_model, shard_checkpoint
from hf_models import make_hf_model  # skips the tests built on it when transformers is not installed


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Gemma 3 model folder written by transformers."""
    path = tmp_path_factory.mktemp("gemma3")
    make_hf_model("gemma3", path)
    return path


@pytest.fixture
def copy(folder, tmp_path):
    """A copy of `folder` to change."""
    return copy_model(folder, tmp_path)


def reference_logits(path):
    ids = torch.arange(1, 20)[None]
    return minipss.load_model(path)(ids).logits


def edit_state(path, fn):
    state = load_file(path / "model.safetensors")
    fn(state)
    save_file(state, path / "model.safetensors")


def edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_v4_hub_dialect_parses_like_v5(folder):
    v5 = json.loads((folder / "config.json").read_text())
    v4 = {k: v for k, v in v5.items() if k not in ("rope_parameters", "layer_types")}
    v4.update(rope_theta=1e6, rope_local_base_freq=1e4, sliding_window_pattern=2,
              rope_scaling={"type": "linear", "factor": 2.0})
    a, b = from_hf(v5), from_hf(v4)
    for field in ("layer_types", "rope_theta", "rope_scaling", "local_rope_theta", "head_dim", "attn_scale"):
        assert getattr(a, field) == getattr(b, field), field


def test_sharded_checkpoint_loads_like_single_file(copy, folder):
    shard_checkpoint(copy)
    assert torch.equal(reference_logits(copy), reference_logits(folder))


def test_multimodal_gemma3_prefix_loads(copy, folder):
    def prefix(state):
        for k in list(state):
            state["language_model." + k] = state.pop(k)
        state["vision_tower.patch.weight"] = torch.zeros(2)
    edit_state(copy, prefix)
    edit_config(copy, lambda c: c.update({"model_type": "gemma3", "text_config": dict(c)}))
    assert torch.equal(reference_logits(copy), reference_logits(folder))


def test_bf16_load_has_no_fp32_parameters(folder):
    model = minipss.load_model(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_missing_key_is_named(copy):
    edit_state(copy, lambda s: s.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(ValueError, match="missing keys.*layers.1.mlp.down_proj.weight"):
        minipss.load_model(copy)


def test_unexpected_key_is_named_with_its_file(copy):
    edit_state(copy, lambda s: s.update({"model.layers.0.mlp.extra.weight": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"model.safetensors: unexpected key 'model.layers.0.mlp.extra.weight'"):
        minipss.load_model(copy)


def test_shape_mismatch_is_named(copy):
    edit_state(copy, lambda s: s.update({"model.norm.weight": torch.zeros(7)}))
    with pytest.raises(ValueError, match=r"'model.norm.weight' has shape \(7,\)"):
        minipss.load_model(copy)


def test_unsupported_model_type(copy):
    edit_config(copy, lambda c: c.update(model_type="mamba"))
    with pytest.raises(ValueError, match=r"config.json: unsupported model_type 'mamba'"):
        minipss.load_model(copy)


def test_missing_config(copy):
    (copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        minipss.load_model(copy)


def test_invalid_config_json(copy):
    (copy / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: invalid JSON"):
        minipss.load_model(copy)


def test_pickled_checkpoint_is_refused(copy):
    (copy / "model.safetensors").unlink()
    (copy / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="pytorch_model.bin.*never unpickles"):
        minipss.load_model(copy)


def test_missing_tokenizer(copy):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        minipss.load_tokenizer(copy)


def test_multimodal_config_takes_top_level_token_ids_and_text_defaults():
    cfg = from_hf({"model_type": "gemma3", "bos_token_id": 2, "eos_token_id": [1, 106],
                   "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34}})
    assert (cfg.bos_token_id, cfg.eos_token_ids) == (2, [1, 106])
    assert (cfg.num_kv_heads, cfg.sliding_window, cfg.vocab_size) == (4, 4096, 262208)
    assert cfg.layer_types[5] == "full" and cfg.layer_types[4] == "sliding"


def test_mask_broadcasts_from_any_broadcastable_shape(folder):
    model = minipss.load_model(folder)
    c = model.config
    ids = torch.arange(1, 9).expand(2, -1)
    row = torch.ones(c.intermediate_size)
    row[:5] = 0
    full = row.expand(2, c.num_layers, -1)
    expect = model(ids, mlp_mask=full).logits
    for shape in (row, row.expand(c.num_layers, -1), full[:1]):
        assert torch.equal(model(ids, mlp_mask=shape).logits, expect)
    with pytest.raises(ValueError, match="not broadcastable"):
        model(ids, mlp_mask=torch.ones(3, c.intermediate_size))
