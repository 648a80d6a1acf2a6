"""The scale bench's pure parts (bench/scale.py, bench/measure.py): which role a process
plays, what the per-process book keeps, the goal verdicts and the sizes."""

from __future__ import annotations

import sys
from fractions import Fraction

import pytest
from shared import REPO

sys.path.insert(0, str(REPO / "bench"))
import measure
import scale

pytestmark = pytest.mark.unit

RAY = "/venv/lib/python3.11/site-packages/ray"
SPAWN = "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)"
RAYLET = f"{RAY}/core/src/ray/raylet/raylet --python_worker_command={RAY}/default_worker.py"
MP = "python -B -c from multiprocessing"


@pytest.mark.parametrize(
    ("cmdline", "role", "name"),
    [
        ("/venv/bin/python /venv/bin/sdpose crops", "sdpose driver", "sdpose crops"),
        ("/venv/bin/python -m sdpose prepare", "sdpose driver", "sdpose prepare"),
        ("/venv/bin/python /venv/bin/dvc repro crops", "dvc", "dvc"),
        ("/bin/sh -c sdpose crops", "other", "shell"),  # DVC's shell is not the stage
        (f"/venv/bin/python -c {SPAWN} --multiprocessing-fork", "pool worker", "spawn"),
        (f"{MP}.resource_tracker import main", "other", "resource_tracker"),
        (f"{MP}.forkserver import main", "other", "forkserver"),
        ("ray::IDLE", "ray worker", "IDLE"),
        ("ray::MapBatches(augment_batch)->Write", "ray worker", "MapBatches"),
        ("ray::DashboardAgent", "ray service", "DashboardAgent"),
        ("ray-dashboard-NodeHead-0 (/venv/bin/python)", "ray service", "dashboard-NodeHead"),
        (f"python {RAY}/_private/workers/default_worker.py", "ray worker", "default_worker"),
        (RAYLET, "ray service", "raylet"),  # its arguments name the worker's script
        (f"{RAY}/core/src/ray/gcs/gcs_server --log_dir=x", "ray service", "gcs_server"),
        (f"python -u {RAY}/_private/log_monitor.py --session-dir=x", "ray service", "log_monitor"),
        (f"python {RAY}/dashboard/agent.py --node-id=1", "ray service", "dashboard_agent"),
        ("/venv/bin/python /repo/bench/scale.py --child feed", "sdpose driver", "bench child"),
        ("", "other", "?"),
    ],
)
def test_processes_are_grouped_by_role_from_their_command_line(cmdline, role, name):
    assert measure.classify(cmdline) == (role, name)


def sample(pid: int, cmdline: str, cpu_s: float, rss_mb: int, at: float, started: float = 100.0):
    return measure.Sample(pid, started, cmdline, cpu_s, rss_mb * measure.MB, at)


def test_the_book_keeps_each_process_last_cpu_and_peak_rss_even_after_it_ends():
    book = measure.ProcessBook()
    driver = "/venv/bin/python /venv/bin/sdpose crops"
    book.add(sample(10, driver, cpu_s=1.0, rss_mb=300, at=101.0))
    book.add(sample(10, driver, cpu_s=4.0, rss_mb=200, at=105.0))
    book.add(sample(11, "ray::IDLE", cpu_s=2.5, rss_mb=150, at=102.0))  # seen once, then gone
    book.add(sample(12, "ray::MapBatches(crop)", cpu_s=0.5, rss_mb=400, at=103.0))
    assert book.cpu_seconds() == pytest.approx(4.0 + 2.5 + 0.5)
    assert book.peak_rss_by_role() == {
        "sdpose driver": (300 * measure.MB, "sdpose crops"),
        "ray worker": (400 * measure.MB, "MapBatches"),
    }
    assert book.span("sdpose driver") == (100.0, 105.0)
    assert book.span("dvc") is None
    assert book.count("ray worker") == 2


def test_a_reused_pid_is_a_new_process_and_a_forked_worker_takes_its_exec_role():
    book = measure.ProcessBook()
    raylet = f"{RAY}/core/src/ray/raylet/raylet --raylet_socket_name=x"
    book.add(sample(20, raylet, cpu_s=1.0, rss_mb=80, at=101.0, started=100.0))
    book.add(sample(20, "ray::IDLE", cpu_s=1.5, rss_mb=90, at=102.0, started=100.0))
    book.add(sample(20, "ray::IDLE", cpu_s=0.2, rss_mb=70, at=110.0, started=109.0))
    assert len(book.records) == 2
    assert book.cpu_seconds() == pytest.approx(1.5 + 0.2)
    assert book.count("ray worker") == 2 and book.count("ray service") == 0


def test_an_exiting_process_keeps_its_role_and_a_watched_one_ends_when_seen_gone():
    book = measure.ProcessBook()
    driver = "/venv/bin/python /venv/bin/sdpose crops"
    book.add(sample(30, driver, cpu_s=2.0, rss_mb=250, at=101.0))
    book.add(sample(30, "", cpu_s=2.2, rss_mb=0, at=103.0))  # exiting: no command line
    book.add(sample(31, "ray::IDLE", cpu_s=1.0, rss_mb=100, at=101.0))
    assert book.peak_rss_by_role()["sdpose driver"] == (250 * measure.MB, "sdpose crops")
    book.close_ended(["sdpose driver"], running=lambda record: False, at=103.2)
    assert book.span("sdpose driver") == (100.0, 103.2)
    assert all(r.ended is None for r in book.records.values() if r.role == "ray worker")
    book.close_ended(["sdpose driver"], running=lambda record: False, at=109.0)
    assert book.span("sdpose driver") == (100.0, 103.2)  # the first sighting of its end


def test_ray_store_and_spill_keep_their_peaks():
    book = measure.ProcessBook()
    for store, spill in ((10, 0), (50, 5), (20, 1)):
        book.note_ray(store, spill)
    assert (book.store_peak, book.spill_peak) == (50, 5)


def result(size: str, full: bool, prepare: float, crops: float, rss: dict[str, float],
           feed: float, step: float, status: float, bad: dict | None = None) -> dict:  # fmt: skip
    """The figures of one size that the goals read."""
    stages = [{"stage": "prepare", "stage_s_per_1k": prepare, "peak_rss_mb": rss,
               "stage_wall_s": 10.0},
              {"stage": "crops", "stage_s_per_1k": crops, "peak_rss_mb": rss}]  # fmt: skip
    bad_record = {"ann_id": 7, "reported": True, "kept": 99, "kept_clean": 100, "wall_s": 10.5,
                  "strict_exit": 2, "strict_named": True, "clean_wall_s": 10.0,
                  **(bad or {})}  # fmt: skip
    return {"size": size, "full": full, "stages": stages, "dvc_status_s": status,
            "feed": {"samples_per_s": feed, "peak_rss_mb": {}},
            "step": {"samples_per_s": step}, "bad_record": bad_record}  # fmt: skip


def test_goals_pass_when_costs_stay_flat_and_the_feed_keeps_up():
    small = result("1/16", False, 2.0, 8.0, {"dvc": 100, "ray worker": 500}, 60, 5, 2.0)
    large = result("1", True, 2.2, 9.0, {"dvc": 140, "ray worker": 600}, 40, 5, 12.0)
    verdicts = {goal.name: goal for goal in scale.goals([small, large])}
    assert all(goal.passed is True for goal in verdicts.values()), verdicts
    assert "not run at full size" not in "".join(goal.line() for goal in verdicts.values())
    assert verdicts["feed vs sdpose-t step"].line().endswith("PASS")


def test_goals_fail_on_growth_a_slow_feed_and_a_slow_status():
    small = result("1/16", False, 2.0, 8.0, {"dvc": 100, "ray worker": 500}, 60, 5, 2.0)
    large = result("1/4", False, 2.6, 8.0, {"dvc": 160, "ray worker": 500}, 8, 5, 31.0)
    verdicts = {goal.name: goal for goal in scale.goals([small, large])}
    assert verdicts["prepare per-instance cost"].passed is False  # 1.3x > 1.25x
    assert verdicts["crops per-instance cost"].passed is True
    assert verdicts["peak RSS per role"].passed is False  # dvc 1.6x > 1.5x
    rss = verdicts["peak RSS per role"].measured
    assert "dvc 1.60x" in rss and "worst sdpose process prepare: ray worker 1.00x" in rss
    assert verdicts["feed vs sdpose-t step"].passed is False  # 1.6x < 2x
    assert verdicts["dvc status"].line().startswith("dvc status: 31.0 s (goal < 30 s) FAIL")
    assert verdicts["dvc status"].line().endswith("at 1/4; not run at full size")


@pytest.mark.parametrize(
    "bad",
    [
        {"reported": False},  # the record was not named in the report
        {"kept": 90},  # good rows went with it
        {"wall_s": 25.0},  # 2.5x the clean prepare: the file was read again
        {"strict_exit": 1, "strict_named": False},  # strict mode did not name it
    ],
)
def test_the_corrupt_record_goal_fails_on_each_fault(bad):
    small = result("1/16", False, 1, 1, {}, 1, 1, 1)
    assert scale.bad_record_goal([small, result("1", True, 1, 1, {}, 1, 1, 1)]).passed is True
    verdict = scale.bad_record_goal([small, result("1", True, 1, 1, {}, 1, 1, 1, bad)])
    assert verdict.passed is False


def test_a_role_over_4_gib_fails_however_flat_it_is():
    rss = {"ray worker": 5000}
    verdict = scale.rss_goal([result("1/16", False, 1, 1, rss, 1, 1, 1),
                              result("1", True, 1, 1, rss, 1, 1, 1)])  # fmt: skip
    assert verdict.passed is False and "ray worker 5000 MB" in verdict.measured


def test_one_size_cannot_judge_growth():
    only = result("1/16", False, 2.0, 8.0, {"dvc": 100}, 60, 5, 2.0)
    verdict = scale.rate_goal([only], "crops")
    assert verdict.passed is None and verdict.line().endswith("N/A (one size run)")


def test_sizes_are_fractions_of_coco_and_come_smallest_first():
    sizes = scale.parse_sizes("1/4, 1/16,1")
    assert [size.label for size in sizes] == ["1/16", "1/4", "1"]
    sixteenth = sizes[0]
    assert sixteenth.fraction == Fraction(1, 16) and sixteenth.slug == "1-16"
    assert (sixteenth.train_images, sixteenth.val_images) == (3537, 147)
    assert (sizes[2].train_images, sizes[2].val_images, sizes[2].full) == (56599, 2346, True)
    assert not sixteenth.full
    assert scale.parse_sizes("1/100000")[0].val_images == 1  # never an empty split
    with pytest.raises(ValueError):
        scale.parse_sizes("0")


def test_a_size_params_are_the_coco_size_set_cut_for_sdpose_t():
    params = scale.size_params(scale.parse_sizes("1/16")[0])
    assert params["synth"]["train_images"] == 3537 and params["synth"]["val_images"] == 147
    assert params["synth"]["image_size"] == [640, 480] and params["synth"]["max_people"] == 5
    assert params["model"]["preset"] == "sdpose-t"


def test_warming_the_page_cache_reads_every_byte_under_the_roots(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / "deep" / "x.jpg").write_bytes(b"1" * 3000)
    (tmp_path / "a" / "y.json").write_bytes(b"2" * 70)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z").write_bytes(b"3" * 5)
    assert scale.warm_page_cache([tmp_path / "a", tmp_path / "b"], chunk=1024) == 3075
