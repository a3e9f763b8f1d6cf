"""Progress lines: sizes, throttled counters in a log, quiet, the upload body's reports."""

from __future__ import annotations

import io

from autofhe.fhe import progress as progress_module
from autofhe.fhe.progress import Progress, megabytes


def test_sizes_read_in_mb_and_small_ones_do_not_read_zero():
    assert megabytes(631_517_760) == "631.5 MB"
    assert megabytes(246_488) == "0.2 MB"
    assert megabytes(8_376) == "8.4 kB"
    assert megabytes(64) == "64 bytes"


def test_step_reports_start_and_duration_with_detail():
    out = io.StringIO()
    with Progress(stream=out).step("generating keys") as result:
        result["detail"] = "1.0 MB"
    lines = out.getvalue().splitlines()
    assert lines[0] == "generating keys ..."
    assert lines[1].startswith("generating keys: done in ") and lines[1].endswith(" s (1.0 MB)")


def test_counter_in_a_log_prints_first_throttled_and_final(monkeypatch):
    out = io.StringIO()
    clock = iter([100.0, 101.0, 102.0, 106.0, 107.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    p = Progress(stream=out)  # StringIO is not a terminal
    for i in range(1, 6):
        p.count(f"{i}/5", final=i == 5)
    # 1 (first), 2 and 3 within 5 s of it: skipped, 4 (6 s later), 5 (final)
    assert out.getvalue().splitlines() == ["1/5", "4/5", "5/5"]


def test_quiet_prints_nothing():
    out = io.StringIO()
    p = Progress(quiet=True, stream=out)
    p.say("x")
    p.count("1/1", final=True)
    with p.step("y"):
        pass
    assert out.getvalue() == ""
