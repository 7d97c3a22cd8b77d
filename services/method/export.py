"""Export a dataset for SFT: plain JSONL, or LLaMA-Factory's sharegpt / alpaca files.

LLaMA-Factory trains on response tokens only by default, which is what the method
asks for. Its files are JSON arrays described by an entry in ``dataset_info.json``;
the entry is merged into an existing ``dataset_info.json`` in the same directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from services.method.formats import write_jsonl

FORMATS = ("jsonl", "sharegpt", "alpaca")


def to_sharegpt(row: dict) -> dict:
    return {"conversations": [{"from": "human", "value": row["prompt"]},
                              {"from": "gpt", "value": row["response"]}]}


def to_alpaca(row: dict) -> dict:
    return {"instruction": row["prompt"], "input": "", "output": row["response"]}


_DATASET_INFO = {
    "sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations"},
                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}},
    "alpaca": {"columns": {"prompt": "instruction", "query": "input", "response": "output"}},
}


def export_dataset(rows: Sequence[dict], out_dir: str | Path, fmt: str = "jsonl", name: str = "persyn") -> Path:
    """Write ``rows`` ({id, prompt, response, teacher}) in ``fmt``; returns the data file."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        return write_jsonl(rows, out_dir / f"{name}.jsonl")
    convert = to_sharegpt if fmt == "sharegpt" else to_alpaca
    data_file = out_dir / f"{name}_{fmt}.json"
    data_file.write_text(json.dumps([convert(r) for r in rows], ensure_ascii=False, indent=1))
    info_path = out_dir / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[f"{name}_{fmt}"] = {"file_name": data_file.name, **_DATASET_INFO[fmt]}
    info_path.write_text(json.dumps(info, indent=1))
    return data_file
