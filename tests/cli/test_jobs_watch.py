"""``persyn jobs watch``: what a person sees of a long job, on a terminal or in a log."""

import io

from services.cli.jobs import ProgressView, progress_line


def _job(state, done, total=50_000, finished=None, seconds=100.0, failed=0):
    return {"id": "j1", "state": state, "stages": [
        {"stage": "route", "total": 1, "done": 1, "failed": 0, "finished": 5.0, "seconds": 4.0},
        {"stage": "generate", "total": total, "done": done, "failed": failed, "finished": finished,
         "seconds": seconds}]}


def test_progress_line_gives_share_and_eta_of_the_running_stage():
    line = progress_line(_job("running", 10_000, seconds=100.0))
    # 10K of 50K in 100 s: 40K left at 100 per second
    assert line == "job j1 running: route 1/1 (100%); generate 10000/50000 (20%, ETA 6m40s)"
    assert "3 failed" in progress_line(_job("running", 10_000, failed=3))


def test_without_a_terminal_lines_are_throttled_and_the_end_is_always_shown():
    out = io.StringIO()  # not a tty: no bars
    view = ProgressView(stream=out, log_every_s=3600)
    for done in range(0, 50_000, 500):
        view.update(_job("running", done))
    view.update(_job("succeeded", 50_000, finished=200.0))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first poll, then the end: not one line per poll
    assert lines[-1].startswith("job j1 succeeded:") and "generate 50000/50000 (100%)" in lines[-1]
