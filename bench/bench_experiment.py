"""The paper's comparison on real math data, at a size a CPU finishes within about an hour.

    python bench/bench_experiment.py [--train-rows 32] [--eval-rows 48] [--full] [--threads 1] [--out DIR]

Teachers: GPT-4-1106-preview and Mixtral-8x7B-Instruct, their real answers to GSM8K
(``../shared/data/gsm8k_parallel.jsonl``, graded 1/0). Student: SmolLM2-135M-Instruct,
trained on a seeded sample of ``--train-rows`` problems per strategy with one budget
and seed, then graded greedily on the first ``--eval-rows`` SVAMP problems (a held-out
set: other problems, another source). LoRA (rank 16, lr 2e-4) by default, ``--full`` for
full fine-tuning (lr 5e-5). Everything else is ``persyn experiment``
(services/student/experiment.py); its table lands in ``<out>/experiment.md``.

The defaults are what a shared 2-core CPU finishes in about 30 minutes (measured there:
a full fine-tuning step of 4 x ~250 tokens ~30 s, 16 greedy answers of 128 tokens ~45 s);
``--train-rows 128 --calibration 64 --eval-rows 150 --max-new-tokens 256`` is the size
to run on a free machine or a GPU.

``--threads 1`` because torch's OpenMP workers spin when the cores are shared: on a busy
2-core box one thread generated 15-30x faster than two (measured: 2.2 s vs 73 s for
4 x 32 tokens).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.student.experiment import ExperimentConfig, run_experiment  # noqa: E402
from services.student.training import DistillConfig  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-rows", type=int, default=32)
    p.add_argument("--calibration", type=int, default=16, help="of the training prompts, the router's")
    p.add_argument("--eval-rows", type=int, default=48)
    p.add_argument("--eval-set", type=Path, default=DATA / "svamp.jsonl")
    p.add_argument("--strategies", default="persyn,strong,mix,car,oracle")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=None, help="default 2e-4 (LoRA), 5e-5 (--full)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--max-length", type=int, default=768)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "experiment")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    run_experiment(ExperimentConfig(
        parallel=DATA / "gsm8k_parallel.jsonl", eval_set=args.eval_set, out_dir=args.out,
        strategies=args.strategies.split(","), n_train=args.train_rows, n_calibration=args.calibration,
        n_eval=args.eval_rows, max_new_tokens=args.max_new_tokens, eval_batch_size=16, seed=args.seed,
        distill=DistillConfig(epochs=args.epochs, learning_rate=args.lr or (5e-5 if args.full else 2e-4),
                              batch_size=args.batch_size, lora=not args.full, max_length=args.max_length, seed=args.seed, progress=False,
                              use_cpu=True)))


if __name__ == "__main__":
    main()
