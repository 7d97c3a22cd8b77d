"""Training a Bradley-Terry router on calibration pairs (SPEC steps 6-7).

Two modes:

- ``frozen``: the backbone only encodes each prompt once (embeddings cached on disk)
  and a linear head is trained on the pairs: seconds on a CPU.
- ``finetune``: backbone and head are trained together (the paper's router; GPU).
  Trainable weights are kept in fp32 (master weights) whatever dtype the backbone's
  config names, and the forward pass runs under bf16 autocast where the GPU has it.

Prompts are split into train and validation *by prompt*, so no prompt's pairs leak
across. The validation prompts report the router's Hit@k next to the best single
teacher's and a kNN router's on the same prompts (``metrics["val"]``).

Model selection: the frozen head's L2 (on the prompt-dependent weights only, never the
per-teacher bias) is chosen by cross-validated Hit@3 on the training prompts (then Hit@1,
then BT loss) with the one-standard-error rule, so the validation figures stay untouched by
the choice; the head is then refit on every prompt. Fine-tuning keeps the epoch with the best validation Hit@3 (then
Hit@1, then BT loss).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from services.core.cache import ScoreCache, cache_key, cached_compute
from services.method.bt import BTHead, bt_loss
from services.method.hits import best_single_choices, hits, in_top_k, knn_choices
from services.method.pairs import bt_probability, make_pairs
from services.routing.model import PromptEncoder, Router

MODES = ("frozen", "finetune")
DEFAULT_WEIGHT_DECAY = 0.01
#: L2 on the head's prompt-dependent weights only (never on the per-teacher bias); the largest
#: value leaves (nearly) the bias alone, i.e. the best single teacher, so selection can fall back to it.
WEIGHT_DECAY_GRID = (1e-2, 1e-1, 1.0, 100.0)
#: Folds of the cross-validation that chooses the frozen head's L2 on the training prompts.
CV_FOLDS = 5
#: Neighbours of the kNN baseline reported next to the router's validation figures.
KNN_K = 10


@dataclass
class TrainConfig:
    backbone: str = "all-minilm-l6-v2"
    mode: str = "frozen"
    max_length: int = 512
    val_fraction: float = 0.15
    weight_decay: float | None = None  # frozen, None: chosen from WEIGHT_DECAY_GRID by cross-validated Hit@3 (one-SE rule)
    head_lr: float = 1e-3  # finetune only
    backbone_lr: float = 2e-5
    epochs: int | None = None  # frozen: at most this many L-BFGS rounds of 10 iterations (default 50); finetune: passes (default 2)
    patience: int | None = None  # finetune: epochs without a better validation score before stopping (default 1)
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


def _selection_key(strengths: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
    """Higher is better: Hit@3, then Hit@1, then minus the BT loss."""
    pairs = make_pairs(scores)
    loss = float(bt_loss(torch.as_tensor(strengths), *(torch.as_tensor(x) for x in
                                                       (pairs.prompt, pairs.a, pairs.b, pairs.label))))
    h = hits(scores, strengths.argmax(axis=1))
    return h["hit@3"], h["hit@1"], -loss if np.isfinite(loss) else -np.inf


def validation_report(strengths: np.ndarray, scores: np.ndarray, train_scores: np.ndarray,
                      train_features: np.ndarray, val_features: np.ndarray) -> dict[str, float]:
    """The router's validation Hit@k next to the best single teacher's (by training mean) and a
    kNN router's on the same prompts, plus pair accuracy and BT loss."""
    pairs = make_pairs(scores)
    prob = bt_probability(strengths[pairs.prompt], pairs.a, pairs.b)
    return {
        "n_prompts": int(len(scores)),
        "pair_accuracy": float(((prob > 0.5) == (pairs.label > 0.5)).mean()) if len(pairs) else float("nan"),
        "bt_loss": -_selection_key(strengths, scores)[2],
        **hits(scores, strengths.argmax(axis=1)),
        **hits(scores, best_single_choices(train_scores, len(scores)), "best_single_"),
        **hits(scores, knn_choices(train_features, train_scores, val_features, KNN_K), "knn_"),
        "knn_k": KNN_K,
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
    # Frozen embeddings serve the frozen head and, in both modes, the kNN baseline.
    features = prompt_embeddings(encoder, config.backbone, prompts, cache, progress)
    if config.mode == "frozen":
        history = _train_frozen(head, features, scores, train_idx, val_idx, config, progress)
    else:
        history = _train_finetune(encoder, head, prompts, features, scores, train_idx, val_idx, config, progress)
    router = Router(encoder, head, list(teachers), {
        "backbone": config.backbone, "mode": config.mode, "train": asdict(config) | {"device": None},
        **(extra_config or {}),
    })
    metrics = {
        "n_prompts": len(prompts), "n_train_prompts": int(len(train_idx)), "n_val_prompts": int(len(val_idx)),
        "n_pairs": int(len(make_pairs(scores))), **history,
    }
    return router, metrics


def _standardise(head: BTHead, x: torch.Tensor) -> None:
    head.feature_mean.copy_(x.mean(dim=0))
    head.feature_scale.copy_(x.std(dim=0) + 1e-6 if len(x) > 1 else torch.ones_like(x[0]))


def _fit_head(head: BTHead, x: torch.Tensor, pairs, l2: float, max_rounds: int) -> None:
    """Fit the head by L-BFGS from zero, in rounds of 10 iterations, until the objective settles.

    The frozen-backbone problem is logistic regression on pair differences with L2 on the
    prompt-dependent weights only, so it is convex: the L2 regularises, no early stopping
    is needed, and the per-teacher bias (the teacher order) is never shrunk.
    """
    torch.nn.init.zeros_(head.linear.weight)
    torch.nn.init.zeros_(head.linear.bias)
    optimiser = torch.optim.LBFGS(head.linear.parameters(), lr=1.0, max_iter=10,
                                  history_size=20, line_search_fn="strong_wolfe")

    def objective():
        optimiser.zero_grad()
        loss = bt_loss(head(x), *pairs) + l2 * head.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    previous = float("inf")
    for _ in range(max_rounds):
        loss = float(optimiser.step(objective).detach())
        if previous - loss < 1e-6 * max(1.0, abs(loss)):
            break
        previous = loss


def _fitted_strengths(head: BTHead, features: np.ndarray, scores: np.ndarray, fit_idx: np.ndarray,
                      eval_idx: np.ndarray, l2: float, max_rounds: int) -> np.ndarray:
    device = head.linear.weight.device
    x_fit = torch.as_tensor(features[fit_idx], device=device)
    _standardise(head, x_fit)
    _fit_head(head, x_fit, _pairs_tensors(scores[fit_idx], device), l2, max_rounds)
    with torch.no_grad():
        return head(torch.as_tensor(features[eval_idx], device=device)).cpu().numpy()


def _choose_l2(head: BTHead, features: np.ndarray, scores: np.ndarray, train_idx: np.ndarray,
               seed: int, max_rounds: int, progress: bool) -> tuple[float, dict]:
    """The largest L2 whose cross-validated Hit@3 and Hit@1 on the training prompts are each within
    one standard error of the best candidate's (the one-standard-error rule; the best is ranked by
    Hit@3, then Hit@1, then -BT loss).

    On a few hundred prompts the Hit@k of close candidates differs by noise, and a smaller L2
    that wins the folds by chance loses on new prompts; the rule keeps prompt-dependent weights
    only where they beat the (nearly) bias-only head by more than that noise.
    """
    folds = np.array_split(np.random.default_rng(seed + 1).permutation(train_idx), CV_FOLDS)
    table, keys, top = {}, {}, {}
    for l2 in tqdm(WEIGHT_DECAY_GRID, disable=not progress, desc="choose router L2"):
        out_of_fold = np.zeros((len(features), scores.shape[1]))
        for i, fold in enumerate(folds):
            rest = np.concatenate([f for j, f in enumerate(folds) if j != i])
            out_of_fold[fold] = _fitted_strengths(head, features, scores, rest, fold, l2, max_rounds)
        keys[l2] = _selection_key(out_of_fold[train_idx], scores[train_idx])
        chosen = out_of_fold[train_idx].argmax(axis=1)
        top[l2] = {k: in_top_k(scores[train_idx], chosen, k) for k in (3, 1)}
        table[str(l2)] = {"hit@3": keys[l2][0], "hit@1": keys[l2][1], "bt_loss": -keys[l2][2]}
    best = max(keys, key=keys.get)
    errors = {k: float(top[best][k].std(ddof=1) / np.sqrt(len(train_idx))) for k in (3, 1)}
    chosen_l2 = max(l2 for l2 in WEIGHT_DECAY_GRID
                    if all(top[l2][k].mean() >= top[best][k].mean() - errors[k] for k in (3, 1)))
    return chosen_l2, {"by_weight_decay": table, "best": best,
                       "standard_error": {f"hit@{k}": e for k, e in errors.items()}}


def _train_frozen(head: BTHead, features: np.ndarray, scores: np.ndarray, train_idx: np.ndarray,
                  val_idx: np.ndarray, config: TrainConfig, progress: bool) -> dict:
    with _one_thread():
        return _fit_frozen(head, features, scores, train_idx, val_idx, config, progress)


def _fit_frozen(head: BTHead, features: np.ndarray, scores: np.ndarray, train_idx: np.ndarray,
                val_idx: np.ndarray, config: TrainConfig, progress: bool) -> dict:
    max_rounds = config.epochs or 50
    history: dict = {}
    can_cross_validate = len(train_idx) >= 2 * CV_FOLDS and len(make_pairs(scores[train_idx])) > 0
    if config.weight_decay is not None or not can_cross_validate:
        l2 = DEFAULT_WEIGHT_DECAY if config.weight_decay is None else config.weight_decay
    else:
        l2, history["cross_validation"] = _choose_l2(head, features, scores, train_idx, config.seed,
                                                       max_rounds, progress)
    history["weight_decay"] = l2
    if len(val_idx) and len(make_pairs(scores[val_idx])):
        val_strengths = _fitted_strengths(head, features, scores, train_idx, val_idx, l2, max_rounds)
        history["val"] = validation_report(val_strengths, scores[val_idx], scores[train_idx],
                                           features[train_idx], features[val_idx])
    # The final head learns from every calibration prompt: the validation prompts only reported.
    _fitted_strengths(head, features, scores, np.arange(len(features)), np.arange(0), l2, max_rounds)
    head.eval()
    return history


@contextlib.contextmanager
def _one_thread():
    """Fit the small head problems on one CPU thread: a second one only adds synchronisation, which
    costs up to 10x on a loaded machine (torch's thread count is per process; restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _autocast(device: torch.device):
    """bf16 autocast where the GPU supports it; fp32 elsewhere (CPU bf16 is slow and lossy here)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train_finetune(encoder: PromptEncoder, head: BTHead, prompts: Sequence[str], features: np.ndarray,
                    scores: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, config: TrainConfig,
                    progress: bool) -> dict:
    # fp32 master weights: AdamW steps on bf16 weights (a bf16 config such as Qwen2.5's) mostly
    # round away, since bf16 keeps 8 bits of mantissa.
    encoder.model.float()
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

    def val_strengths() -> np.ndarray:
        with _autocast(device):
            encoded = torch.as_tensor(encoder.encode(val_prompts), device=device)
        with torch.no_grad():
            return head(encoded).float().cpu().numpy()

    best = (None, 0, None, None)  # (selection key, epoch, weights, validation strengths)
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
            with _autocast(device):
                strengths = head(encoder([prompts[i] for i in batch]))
            loss = bt_loss(strengths.float(), *pairs)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(encoder.parameters()) + list(head.parameters()), 1.0)
            optimiser.step()
            train_loss = loss.item()
        if has_val:
            strengths = val_strengths()
            key = _selection_key(strengths, scores[val_idx])
            if best[0] is None or key > best[0]:
                state = {k: v.detach().cpu().clone() for k, v in
                         {**{"encoder." + k: v for k, v in encoder.state_dict().items()},
                          **{"head." + k: v for k, v in head.state_dict().items()}}.items()}
                best = (key, epoch, state, strengths)
            elif epoch - best[1] >= (config.patience or 1):
                break
    bar.close()
    if best[2] is not None:
        encoder.load_state_dict({k[8:]: v for k, v in best[2].items() if k.startswith("encoder.")})
        head.load_state_dict({k[5:]: v for k, v in best[2].items() if k.startswith("head.")})
    encoder.eval()
    head.eval()
    history = {"train_loss": train_loss, "epochs": epoch, "best_epoch": best[1] if has_val else epoch,
               "weight_decay": weight_decay}
    if has_val:
        history["val"] = validation_report(best[3], scores[val_idx], scores[train_idx],
                                           features[train_idx], features[val_idx])
    return history
