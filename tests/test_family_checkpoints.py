"""GPT-NeoX and GPT-2 beyond the parity rows: hub configs and key layouts, trained checkpoints that
transformers reads back (GPT-2's Conv1D `[in, out]` layout round-trips), refused variants."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import minipss
from minipss.model.families import from_hf
from minipss.run.trainer import TrainSettings, train
from hf_models import make_hf_model
from builders import training_text
from tiny import make_tiny_model


# config.json of EleutherAI/pythia-70m as published (transformers v4 keys)
PYTHIA_70M = {"architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu",
              "hidden_size": 512, "initializer_range": 0.02, "intermediate_size": 2048, "layer_norm_eps": 1e-05,
              "max_position_embeddings": 2048, "model_type": "gpt_neox", "num_attention_heads": 8,
              "num_hidden_layers": 6, "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
              "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": True,
              "use_parallel_residual": True, "vocab_size": 50304}


@pytest.mark.parametrize("model_type", ["gpt_neox", "gpt2"])
def test_trained_checkpoint_loads_in_transformers(model_type, tmp_path):
    transformers = pytest.importorskip("transformers")
    model_dir = make_tiny_model(tmp_path / "m", model_type=model_type, layers=2)
    data = tmp_path / "data.txt"
    data.write_text(training_text())
    before = minipss.load_model(model_dir)
    columns = [0, 3, 5]
    settings = TrainSettings(steps=3, lr=1e-2, batch_size=2, seq_len=24, warmup=1)
    trained = train(model_dir, data, tmp_path / "out", settings, {1: columns}, quiet=True)
    old, new = before.value_matrices()[1].weight, trained.value_matrices()[1].weight
    assert not torch.equal(old[:, columns], new[:, columns]) and torch.equal(old[:, 6:], new[:, 6:])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager")
    # transformers' value matrix is ours (GPT-2's Conv1D keeps it as [in, out], the transpose of nn.Linear)
    theirs = hf.get_submodule(f"{trained.blocks_path}.1.{trained.value_matrix}").weight
    assert torch.equal(theirs, new.t() if model_type == "gpt2" else new)
    ids = torch.tensor([[2, 50, 60, 70, 80, 90, 100]])
    with torch.no_grad():
        assert (hf(ids).logits - trained(ids).logits).abs().max() <= 1e-4
        assert (before(ids).logits - trained(ids).logits).abs().max() > 1e-4


def test_pythia_hub_config_reads_as_transformers_reads_it():
    transformers = pytest.importorskip("transformers")
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention

    kwargs = {k: v for k, v in PYTHIA_70M.items() if k not in ("architectures", "model_type", "torch_dtype",
                                                                 "transformers_version")}
    config = transformers.GPTNeoXConfig(**kwargs)
    hub, saved = from_hf(PYTHIA_70M), from_hf(config.to_dict())  # v4 keys, and what v5 writes
    attention = GPTNeoXAttention(config, 0)
    for c in (hub, saved):
        assert c.rotary_dim == attention.rotary_ndims and c.scale == attention.scaling
        assert c.rope_theta == config.rope_parameters["rope_theta"] and c.rope_scaling is None
        assert c.parallel_residual is config.use_parallel_residual and c.activation == "gelu"
        assert c.qkv_bias and c.o_bias and c.mlp_bias and not c.tie_embeddings
        assert c.eos_token_ids == [0] and c.bos_token_id == 0


def test_gpt2_hub_keys_without_prefix_and_with_buffers_load(tmp_path):
    pytest.importorskip("transformers")
    hf = make_hf_model("gpt2", tmp_path)
    ids = torch.arange(1, 30)[None]
    state = load_file(tmp_path / "model.safetensors")
    hub = {k.removeprefix("transformer."): v for k, v in state.items()}  # as openai-community/gpt2 stores it
    assert len(hub) == len(state) and "wte.weight" in hub
    for i in range(hf.config.n_layer):
        hub[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        hub[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(hub, tmp_path / "model.safetensors")
    with torch.no_grad():
        assert (minipss.load_model(tmp_path)(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_unsupported_variants_are_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="add_cross_attention"):
        from_hf({"model_type": "gpt2", "vocab_size": 10, "add_cross_attention": True})
    with pytest.raises(ValueError, match="rotary_pct"):
        from_hf({**PYTHIA_70M, "rotary_pct": 0.05})  # 3 of a head's 64 dims: not pairs
    with pytest.raises(ValueError, match="activation"):
        from_hf({**PYTHIA_70M, "hidden_act": "relu6"})
    model = minipss.load_model(make_tiny_model(tmp_path / "m", model_type="gpt2", layers=1,
                                               max_position_embeddings=16))
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.ones(1, 17, dtype=torch.long))
