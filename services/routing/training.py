"""Training a Bradley-Terry router on calibration pairs (SPEC steps 6-7).

Two modes:

- ``frozen``: the backbone only encodes each prompt once (embeddings cached on disk)
  and a linear head is trained on the pairs: seconds on a CPU.
- ``finetune``: backbone and head are trained together (the paper's router; GPU).

Prompts are split into train and validation *by prompt*, so no prompt's pairs leak
across; training stops early when the validation Bradley-Terry loss stops improving
and keeps the best weights.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from services.core.cache import ScoreCache, cache_key, cached_compute
from services.method.bt import BTHead, bt_loss
from services.method.hits import hit_at_k
from services.method.pairs import bt_probability, make_pairs
from services.routing.model import PromptEncoder, Router

MODES = ("frozen", "finetune")
DEFAULT_WEIGHT_DECAY = 0.01
WEIGHT_DECAY_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class TrainConfig:
    backbone: str = "all-minilm-l6-v2"
    mode: str = "frozen"
    max_length: int = 512
    val_fraction: float = 0.15
    weight_decay: float | None = None  # None: pick from WEIGHT_DECAY_GRID by validation loss
    head_lr: float = 1e-3  # finetune only
    backbone_lr: float = 2e-5
    epochs: int | None = None  # frozen: L-BFGS rounds of 10 iterations (default 50); finetune: passes (default 2)
    patience: int | None = None  # validation checks without improvement (frozen: 3 rounds, finetune: 1 epoch)
    batch_prompts: int = 16  # finetune only
    seed: int = 0
    device: str | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")


def split_prompts(n_prompts: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of prompt indices into (train, validation)."""
    order = np.random.default_rng(seed).permutation(n_prompts)
    n_val = int(round(n_prompts * val_fraction)) if n_prompts >= 10 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _pairs_tensors(scores: np.ndarray, device) -> tuple[torch.Tensor, ...]:
    pairs = make_pairs(scores)
    return tuple(torch.as_tensor(x, device=device) for x in (pairs.prompt, pairs.a, pairs.b, pairs.label))


def _val_metrics(strengths: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    pairs = make_pairs(scores)
    prob = bt_probability(strengths[pairs.prompt], pairs.a, pairs.b)
    chosen = strengths.argmax(axis=1)
    return {
        "pair_accuracy": float(((prob > 0.5) == (pairs.label > 0.5)).mean()) if len(pairs) else float("nan"),
        "hit@1": hit_at_k(scores, chosen, 1),
        "hit@3": hit_at_k(scores, chosen, 3),
    }


def prompt_embeddings(encoder: PromptEncoder, backbone: str, prompts: Sequence[str],
                      cache: ScoreCache | None, progress: bool = False) -> np.ndarray:
    """Frozen-backbone embeddings, computed once per (backbone, max length, prompt)."""
    keys = [cache_key("embed", backbone, str(encoder.max_length), p) for p in prompts]
    vectors = cached_compute(
        cache, keys,
        lambda idx: encoder.encode([prompts[i] for i in idx], progress=progress),
        vectors=True,
    )
    return np.stack(vectors).astype(np.float32)


def train_router(prompts: Sequence[str], teachers: Sequence[str], scores: np.ndarray,
                 config: TrainConfig | None = None, *, cache: ScoreCache | None = None,
                 extra_config: dict | None = None, progress: bool = False) -> tuple[Router, dict]:
    """Train a router on ground-truth scores ``[n_prompts, n_teachers]`` (NaN = missing)."""
    config = config or TrainConfig()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(prompts), len(teachers)):
        raise ValueError(f"scores shape {scores.shape} does not match {len(prompts)} prompts x {len(teachers)} teachers")
    if len(make_pairs(scores)) == 0:
        raise ValueError("no training pairs: every prompt's teachers are tied or missing")
    torch.manual_seed(config.seed)
    encoder = PromptEncoder(config.backbone, max_length=config.max_length, device=config.device)
    head = BTHead(encoder.hidden_size, len(teachers)).to(encoder.device)
    train_idx, val_idx = split_prompts(len(prompts), config.val_fraction, config.seed)
    if config.mode == "frozen":
        features = prompt_embeddings(encoder, config.backbone, prompts, cache, progress)
        history = _train_frozen(head, features, scores, train_idx, val_idx, config, progress)
    else:
        history = _train_finetune(encoder, head, prompts, scores, train_idx, val_idx, config, progress)
    router = Router(encoder, head, list(teachers), {
        "backbone": config.backbone, "mode": config.mode, "train": asdict(config) | {"device": None},
        **(extra_config or {}),
    })
    metrics = {
        "n_prompts": len(prompts), "n_train_prompts": int(len(train_idx)), "n_val_prompts": int(len(val_idx)),
        "n_pairs": int(len(make_pairs(scores))), **history,
    }
    return router, metrics


def _fit_head_lbfgs(head: BTHead, x_train: torch.Tensor, train_pairs, x_val: torch.Tensor, val_pairs,
                    l2: float, max_rounds: int, patience: int) -> tuple[float, int, dict]:
    """Fit the head by L-BFGS in rounds of 10 iterations, stopping early on validation loss.

    The frozen-backbone problem is L2-regularised logistic regression on pair
    differences, so a quasi-Newton fit converges in a few rounds where Adam needs
    hundreds of steps and a tuned learning rate.
    """
    torch.nn.init.zeros_(head.linear.weight)
    torch.nn.init.zeros_(head.linear.bias)
    optimiser = torch.optim.LBFGS(head.linear.parameters(), lr=1.0, max_iter=10,
                                  history_size=20, line_search_fn="strong_wolfe")

    def objective():
        optimiser.zero_grad()
        loss = bt_loss(head(x_train), *train_pairs) + l2 * head.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    best = (float("inf"), 0, copy.deepcopy(head.state_dict()))
    for round_ in range(1, max_rounds + 1):
        optimiser.step(objective)
        if val_pairs is None:
            best = (float("nan"), round_, copy.deepcopy(head.state_dict()))
            continue
        with torch.no_grad():
            val_loss = float(bt_loss(head(x_val), *val_pairs))
        if val_loss < best[0] - 1e-6:
            best = (val_loss, round_, copy.deepcopy(head.state_dict()))
        elif round_ - best[1] >= patience:
            break
    return best


def _train_frozen(head: BTHead, features: np.ndarray, scores: np.ndarray, train_idx: np.ndarray,
                  val_idx: np.ndarray, config: TrainConfig, progress: bool) -> dict:
    device = head.linear.weight.device
    x_train = torch.as_tensor(features[train_idx], device=device)
    head.feature_mean.copy_(x_train.mean(dim=0))
    head.feature_scale.copy_(x_train.std(dim=0) + 1e-6)
    train_pairs = _pairs_tensors(scores[train_idx], device)
    x_val = torch.as_tensor(features[val_idx], device=device)
    val_pairs = _pairs_tensors(scores[val_idx], device) if len(val_idx) else None
    if val_pairs is not None and len(val_pairs[0]) == 0:
        val_pairs = None
    grid = WEIGHT_DECAY_GRID if config.weight_decay is None and val_pairs is not None else (
        [config.weight_decay if config.weight_decay is not None else DEFAULT_WEIGHT_DECAY])
    rounds = config.epochs or 50
    tried = {}
    best = None
    for l2 in tqdm(grid, disable=not progress, desc="train router head"):
        val_loss, rounds_used, state = _fit_head_lbfgs(
            head, x_train, train_pairs, x_val, val_pairs, l2, rounds, config.patience or 3)
        tried[str(l2)] = val_loss
        if best is None or val_loss < best[0]:
            best = (val_loss, rounds_used, state, l2)
    history: dict = {"weight_decay": best[3], "best_round": best[1]}
    if val_pairs is not None:
        head.load_state_dict(best[2])
        with torch.no_grad():
            val_strengths = head(x_val).cpu().numpy()
        history.update(val_loss=best[0], val_loss_by_weight_decay=tried,
                       val=_val_metrics(val_strengths, scores[val_idx]))
        # Refit on every calibration prompt with the chosen decay and length: the
        # validation prompts were only needed to choose them.
        all_idx = np.sort(np.concatenate([train_idx, val_idx]))
        x_all = torch.as_tensor(features[all_idx], device=device)
        head.feature_mean.copy_(x_all.mean(dim=0))
        head.feature_scale.copy_(x_all.std(dim=0) + 1e-6)
        _fit_head_lbfgs(head, x_all, _pairs_tensors(scores[all_idx], device), x_all, None,
                        best[3], best[1], 0)
    else:
        head.load_state_dict(best[2])
    head.eval()
    return history


def _train_finetune(encoder: PromptEncoder, head: BTHead, prompts: Sequence[str], scores: np.ndarray,
                    train_idx: np.ndarray, val_idx: np.ndarray, config: TrainConfig, progress: bool) -> dict:
    device = encoder.device
    weight_decay = DEFAULT_WEIGHT_DECAY if config.weight_decay is None else config.weight_decay
    optimiser = torch.optim.AdamW([
        {"params": encoder.parameters(), "lr": config.backbone_lr, "weight_decay": weight_decay},
        {"params": [head.linear.weight], "lr": config.head_lr, "weight_decay": weight_decay},
        {"params": [head.linear.bias], "lr": config.head_lr, "weight_decay": 0.0},
    ])
    rng = np.random.default_rng(config.seed)
    epochs = config.epochs or 2
    val_prompts = [prompts[i] for i in val_idx]
    has_val = len(val_idx) > 0 and len(make_pairs(scores[val_idx])) > 0
    best = (float("inf"), 0, None)
    bar = tqdm(total=epochs * len(train_idx), disable=not progress, desc="fine-tune router")
    train_loss = float("nan")
    for epoch in range(1, epochs + 1):
        encoder.train()
        head.train()
        order = rng.permutation(train_idx)
        for start in range(0, len(order), config.batch_prompts):
            batch = order[start:start + config.batch_prompts]
            pairs = _pairs_tensors(scores[batch], device)
            bar.update(len(batch))
            if len(pairs[0]) == 0:
                continue
            loss = bt_loss(head(encoder([prompts[i] for i in batch])), *pairs)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(encoder.parameters()) + list(head.parameters()), 1.0)
            optimiser.step()
            train_loss = loss.item()
        if has_val:
            features = torch.as_tensor(encoder.encode(val_prompts), device=device)
            with torch.no_grad():
                val_loss = float(bt_loss(head(features), *_pairs_tensors(scores[val_idx], device)))
            if val_loss < best[0]:
                state = {k: v.detach().cpu().clone() for k, v in
                         {**{"encoder." + k: v for k, v in encoder.state_dict().items()},
                          **{"head." + k: v for k, v in head.state_dict().items()}}.items()}
                best = (val_loss, epoch, state)
            elif epoch - best[1] >= (config.patience or 1):
                break
    bar.close()
    if best[2] is not None:
        encoder.load_state_dict({k[8:]: v for k, v in best[2].items() if k.startswith("encoder.")})
        head.load_state_dict({k[5:]: v for k, v in best[2].items() if k.startswith("head.")})
    encoder.eval()
    head.eval()
    history = {"train_loss": train_loss, "epochs": epoch, "best_epoch": best[1] if has_val else epoch}
    if has_val:
        with torch.no_grad():
            val_strengths = head(torch.as_tensor(encoder.encode(val_prompts), device=device)).cpu().numpy()
        history["val_loss"] = best[0]
        history["val"] = _val_metrics(val_strengths, scores[val_idx])
    return history
