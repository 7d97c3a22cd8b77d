import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from services.scoring.quality import math_verify_reward, math_verify_rewards

CASES = [
    ("First 6 * 7 = 42, so the answer is \\boxed{42}", "42", 1.0),
    ("The answer is 42.", "42", 1.0),
    ("He spends 40 + 2 = 42 dollars.", "42", 1.0),
    ("The answer is 41.", "42", 0.0),
    ("We get 42 first, then subtract 1 to get 41.", "42", 0.0),
    ("asdf {{ \\frac{ }} $$ \\boxed{", "42", 0.0),
    ("", "42", 0.0),
    ("I don't know.", "42", 0.0),
    ("The answer is $\\frac{1}{2}$.", "0.5", 1.0),
    ("So x = 1/2", "\\frac{1}{2}", 1.0),
    ("The answer is 42.", "$42$", 1.0),
]


@pytest.mark.parametrize("response,reference,expected", CASES)
def test_math_verify_reward(response, reference, expected):
    assert math_verify_reward(response, reference) == expected


def test_bad_reference_and_types():
    assert math_verify_reward("The answer is 42.", "") == 0.0
    assert math_verify_reward("The answer is 42.", "%%%") == 0.0
    assert math_verify_reward(None, "42") == 0.0  # type: ignore[arg-type]


def test_rewards_list():
    assert math_verify_rewards(["The answer is 42.", "It is 7.", "??"], "42") == [1.0, 0.0, 0.0]


def _all_cases():
    return [math_verify_reward(r, ref) for r, ref, _ in CASES]


def test_in_thread():
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", _all_cases()))
    t.start()
    t.join(60)
    assert out["v"] == [e for _, _, e in CASES]


def test_in_thread_pool():
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: math_verify_reward(c[0], c[1]), CASES * 3))
    assert got == [e for _, _, e in CASES] * 3


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_in_process_pool(start_method):
    import multiprocessing as mp

    with ProcessPoolExecutor(2, mp_context=mp.get_context(start_method)) as pool:
        got = list(pool.map(math_verify_reward, [c[0] for c in CASES], [c[1] for c in CASES]))
    assert got == [e for _, _, e in CASES]


# --------------------------------------------------------------------------- reward model

@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory):
    """A random 2-layer BERT reward head with the MiniLM tokenizer plus a toy chat template."""
    transformers = pytest.importorskip("transformers")
    from services.core.models import ModelNotFound, minilm_dir

    try:
        src = minilm_dir()
        tok = transformers.AutoTokenizer.from_pretrained(src)
    except (ModelNotFound, OSError) as exc:
        pytest.skip(f"no local tokenizer: {exc}")
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    )
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, num_labels=1)
    import torch

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    out = tmp_path_factory.mktemp("tiny_rm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_reward_model_scorer(tiny_rm_dir):
    import torch

    from services.scoring.quality import RewardModelScorer

    items = [("What is 2+2?", "4"), ("Say hi", "Hello there, how are you doing today?"),
             ("Explain gravity", "Things fall. " * 30), ("", "")]
    scorer = RewardModelScorer(str(tiny_rm_dir), max_length=64, batch_size=2, device="cpu")
    scores = scorer.score(items)
    assert scores.shape == (4,) and scores.dtype == np.float32 and np.all(np.isfinite(scores))
    # batch composition and order do not change a score
    one_by_one = RewardModelScorer(str(tiny_rm_dir), max_length=64, batch_size=1, device="cpu")
    np.testing.assert_allclose(one_by_one.score(items[::-1])[::-1], scores, atol=1e-5)
    # raw logit of the chat-template rendering, no activation
    text = scorer.render(*items[0])
    assert text.startswith("[user] What is 2+2?") and "[assistant] 4" in text
    enc = scorer.tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        logit = scorer.model(**enc).logits[0, 0].item()
    assert abs(logit - scores[0]) < 1e-5
    assert abs(scorer(*items[0]) - scores[0]) < 1e-6
    assert scorer.score([]).shape == (0,)
