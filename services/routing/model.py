"""Per-student routers: a backbone that encodes the prompt plus a Bradley-Terry head.

A router artifact is a directory that loads without the training code:

- ``config.json``: backbone reference, pooling, max length, how it was trained;
- ``teachers.json``: teacher names, in the order of the head's outputs;
- ``router.safetensors``: the head (and its feature standardisation);
- ``backbone/``: the fine-tuned backbone, only when the backbone was trained;
- ``metrics.json``: validation figures from training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from services.core.models import resolve_model
from services.core.precision import resolve_dtype
from services.method.bt import BTHead

ARTIFACT_VERSION = 1
#: One encoder forward pass: at most this many padded tokens ...
ENCODE_TOKEN_BUDGET = 4096
#: ... and padded tokens at most this factor above the real ones.
ENCODE_MAX_PADDING = 1.25


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class PromptEncoder(torch.nn.Module):
    """h(x): mean pool over tokens for an encoder, the last real token for a decoder.

    ``precision`` (auto, fp32, bf16, fp16; ``services.core.precision``) is the backbone's weights
    dtype, for inference: a router loaded to serve may run in bf16, while training keeps the fp32
    default. Pooling and the features handed to the head are fp32 whatever it is.
    ``pooling`` overrides the choice read from the config: a fine-tuned decoder saved as its bare
    base model (``LlamaModel``) no longer says it is a causal LM, so artifacts record their pooling.
    """

    def __init__(self, backbone: str | Path, *, max_length: int = 512, device: str | None = None,
                 precision: str = "fp32", pooling: str | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = resolve_model(str(backbone))
        config = AutoConfig.from_pretrained(path)
        archs = config.architectures or []
        is_decoder = any(a.endswith("ForCausalLM") for a in archs) or getattr(config, "is_decoder", False)
        self.pooling = pooling or ("last" if is_decoder else "mean")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        device = device or default_device()
        self.model = AutoModel.from_pretrained(path, dtype=resolve_dtype(precision, device))
        self.max_length = max_length
        self.hidden_size = int(config.hidden_size)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(prompts), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt").to(self.device)
        hidden = self.model(input_ids=batch["input_ids"],
                            attention_mask=batch["attention_mask"]).last_hidden_state.float()
        mask = batch["attention_mask"]
        if self.pooling == "last":
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embeddings for many prompts, in chunks of similar length so little compute goes to padding."""
        lengths = [len(ids) for ids in self.tokenizer(list(prompts), truncation=True,
                                                      max_length=self.max_length)["input_ids"]]
        out = np.zeros((len(prompts), self.hidden_size), dtype=np.float32)
        was_training = self.training
        self.eval()
        for idx in tqdm(length_chunks(lengths), disable=not progress, desc="encode prompts"):
            out[idx] = self([prompts[i] for i in idx]).float().cpu().numpy()
        self.train(was_training)
        return out


def length_chunks(lengths: Sequence[int], budget: int = ENCODE_TOKEN_BUDGET,
                  max_padding: float = ENCODE_MAX_PADDING) -> list[list[int]]:
    """Indices grouped by ascending length: at most ``budget`` padded tokens per chunk, and padded
    tokens at most ``max_padding`` times the real ones (a prompt that breaks either goes alone)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        n = max(1, int(lengths[i]))
        padded = (len(current) + 1) * n  # ascending order: n is the chunk's longest
        if current and (padded > budget or padded > max_padding * (real + n)):
            chunks.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    if current:
        chunks.append(current)
    return chunks


@dataclass(frozen=True)
class RouteResult:
    teacher: str
    top_k: list[str]
    strengths: dict[str, float]


class Router:
    """A loaded router: prompts in, per-teacher strengths and the chosen teacher out."""

    def __init__(self, encoder: PromptEncoder, head: BTHead, teachers: list[str], config: dict):
        self.encoder = encoder.eval()
        self.head = head.to(encoder.device).eval()
        self.teachers = teachers
        self.config = config

    @classmethod
    def load(cls, directory: str | Path, *, device: str | None = None, precision: str = "fp32") -> "Router":
        """The artifact in ``directory``, its encoder in ``precision`` (the head stays fp32)."""
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{directory} is not a router artifact (no config.json)")
        config = json.loads(config_path.read_text())
        teachers = json.loads((directory / "teachers.json").read_text())
        backbone = directory / "backbone" if config.get("backbone_saved") else config["backbone"]
        encoder = PromptEncoder(backbone, max_length=config["max_length"], device=device, precision=precision,
                                pooling=config.get("pooling"))
        head = BTHead(encoder.hidden_size, len(teachers))
        head.load_state_dict(load_file(directory / "router.safetensors"))
        return cls(encoder, head, teachers, config)

    def save(self, directory: str | Path, *, metrics: dict | None = None, save_backbone: bool = False) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {**self.config, "format_version": ARTIFACT_VERSION, "backbone_saved": save_backbone,
                  "pooling": self.encoder.pooling, "max_length": self.encoder.max_length}
        if save_backbone:
            self.encoder.model.save_pretrained(directory / "backbone")
            self.encoder.tokenizer.save_pretrained(directory / "backbone")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  directory / "router.safetensors")
        (directory / "teachers.json").write_text(json.dumps(self.teachers, indent=1))
        (directory / "config.json").write_text(json.dumps(config, indent=1))
        if metrics is not None:
            (directory / "metrics.json").write_text(json.dumps(metrics, indent=1))
        self.config = config
        return directory

    @torch.inference_mode()
    def strengths(self, prompts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """pi(x) for each prompt: ``[n_prompts, n_teachers]``."""
        features = self.encoder.encode(prompts, progress=progress)
        return self.strengths_from_features(features)

    @torch.inference_mode()
    def strengths_from_features(self, features: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(features, device=self.encoder.device)
        return self.head(x).float().cpu().numpy()

    def route(self, prompts: Sequence[str], *, top_k: int = 3, progress: bool = False) -> list[RouteResult]:
        """The argmax teacher, the top k and every teacher's strength, per prompt."""
        return self.results(self.strengths(prompts, progress=progress), top_k)

    def results(self, strengths: np.ndarray, top_k: int = 3) -> list[RouteResult]:
        k = max(1, min(top_k, len(self.teachers)))
        order = np.argsort(-strengths, axis=1, kind="stable")[:, :k]
        return [
            RouteResult(
                teacher=self.teachers[row_order[0]],
                top_k=[self.teachers[i] for i in row_order],
                strengths={t: float(s) for t, s in zip(self.teachers, row)},
            )
            for row, row_order in zip(strengths, order)
        ]
