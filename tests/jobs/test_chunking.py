"""How a stage's items are cut into generation tasks."""

from services.core.settings import Settings
from services.jobs.stages import chunk_size, generation_units


def test_small_stages_spread_over_workers_and_big_ones_fill_their_chunks():
    settings = Settings(chunk_items=32)
    assert chunk_size(36, settings) == 1  # a demo calibration: one item per task, as many tasks as items
    assert chunk_size(1000, settings) == 16
    assert chunk_size(50_000, settings) == 32 and chunk_size(0, settings) == 1
    assert chunk_size(10, Settings(chunk_items=2, min_chunks=1)) == 2


def test_units_cover_every_pair_once_with_ids_unique_in_the_stage():
    pairs = [(f"p{i}", t) for i in range(5) for t in ("a", "b")]
    units = generation_units("j", "generate", pairs, 4, "r00001-")
    assert [u[0] for u in units] == ["r00001-00000", "r00001-00001", "r00001-00002"]
    assert [tuple(x) for u in units for x in u[2][3]] == pairs and all(u[3] == "generation" for u in units)


def test_routing_and_generation_open_together_once(store):
    job_id = store.create_job("synthesize", {"student_id": "s"}, [{"id": "p0", "prompt": "q"}])
    assert store.start_stages(job_id, [("route", 1), ("generate", 0)])
    assert not store.start_stages(job_id, [("route", 1), ("generate", 0)])  # a redelivered task
    progress = {s["stage"]: s for s in store.stage_progress(job_id)}
    assert list(progress) == ["route", "generate"] and store.job_record(job_id)["stage"] == "generate"
    assert progress["route"]["total"] == 1 and progress["route"]["finished"] is None
    assert progress["generate"]["finished"] is not None  # nothing to generate: finished at once
