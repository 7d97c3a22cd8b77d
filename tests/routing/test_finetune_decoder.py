"""Fine-tuning a real small decoder (SmolLM2-135M) whose config says bf16, as Qwen2.5's does."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from services.core.models import resolve_model
from services.routing.model import Router
from services.routing.training import TrainConfig, train_router


@pytest.fixture(autouse=True)
def one_thread():
    """A few small steps run faster on one thread than two fighting over a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bf16_decoder(tmp_path_factory):
    """SmolLM2-135M stored in bf16 with ``dtype: bfloat16`` in its config."""
    source = resolve_model("smollm2-135m-instruct")
    out = tmp_path_factory.mktemp("smollm2-bf16")
    for f in source.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    weights = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(source / "model.safetensors").items()}
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    return out


def test_finetune_keeps_fp32_master_weights_so_tiny_updates_are_not_lost(bf16_decoder, tmp_path):
    prompts = ["What is 2 plus 3?", "Write a haiku about rain.", "What is 7 times 6?",
               "Write a limerick about a cat.", "What is 10 minus 4?", "Write two lines about the sea."]
    scores = np.array([[1.0, 0.0], [0.0, 1.0]] * 3)
    # An AdamW step moves each weight by about lr = 1e-6; bf16 keeps 8 mantissa bits, so on weights of
    # size ~0.05 (spacing ~2e-4) such a step rounds away unless the weights are kept in fp32.
    router, metrics = train_router(prompts, ["maths", "poet"], scores, TrainConfig(
        backbone=str(bf16_decoder), mode="finetune", epochs=1, batch_prompts=3, backbone_lr=1e-6,
        max_length=16, val_fraction=0.0, seed=0, device="cpu"))
    assert router.encoder.pooling == "last"
    assert {p.dtype for p in router.encoder.parameters()} == {torch.float32}
    before = load_file(bf16_decoder / "model.safetensors")
    after = router.encoder.model.state_dict()
    name = "layers.0.self_attn.q_proj.weight"
    changed = (after[name] != before["model." + name].float()).float().mean().item()
    assert changed > 0.5, f"only {changed:.1%} of {name} moved: the update was lost"
    assert metrics["epochs"] == 1 and np.isfinite(metrics["train_loss"])

    directory = router.save(tmp_path / "ft", metrics=metrics, save_backbone=True)
    loaded = Router.load(directory, device="cpu")
    assert loaded.encoder.pooling == "last"
    np.testing.assert_allclose(loaded.strengths(prompts[:2]), router.strengths(prompts[:2]), atol=1e-4)
