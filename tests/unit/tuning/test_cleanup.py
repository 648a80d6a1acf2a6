"""Placement groups of trials that Tune ended by killing their driver: the controller
records its group (PlacementGroupRecorder), the main process removes it once the controller
is dead (PlacementGroupJanitor), and keeps it while the controller is still stopping.

Ray's State API and placement group calls are replaced by fakes over a table of actors and
groups; no cluster is started.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import ray
import ray.util.state as ray_state

from sdpose import ray_runtime
from sdpose.tuning import cleanup
from sdpose.tuning.cleanup import (
    CONTROLLER,
    PLACEMENT_GROUP,
    SWEEP_INTERVAL_S,
    PlacementGroupJanitor,
    PlacementGroupRecorder,
    recorded_worker_group,
)

pytestmark = pytest.mark.unit

DASHBOARD = "http://127.0.0.1:8265"
# the module (ray.util.placement_group, the attribute, is the function of that name)
placement_groups = importlib.import_module("ray.util.placement_group")


def group_id() -> str:
    """A well-formed placement group id, as the recorder reports it (hex)."""
    return ray.PlacementGroupID.from_random().hex()


# ------------------------------------------------------------------ the recorder
def test_the_controller_records_its_groups_id_and_its_own(monkeypatch, swap) -> None:
    """After the worker group starts, recorded_worker_group names its placement group and
    the controller actor; callers get a copy, not the record itself."""
    monkeypatch.setattr(cleanup, "_recorded", {}, raising=False)  # this test's own process
    swap(ray.get_runtime_context, lambda: SimpleNamespace(get_actor_id=lambda: "actor-7"), ray)
    group = group_id()
    handle = SimpleNamespace(placement_group=SimpleNamespace(id=ray.PlacementGroupID(
        bytes.fromhex(group))))  # fmt: skip
    worker_group = SimpleNamespace(
        get_worker_group_state=lambda: SimpleNamespace(placement_group_handle=handle)
    )
    PlacementGroupRecorder().after_worker_group_start(worker_group)
    recorded = recorded_worker_group()
    assert recorded == {PLACEMENT_GROUP: group, CONTROLLER: "actor-7"}
    recorded[PLACEMENT_GROUP] = "changed"
    assert recorded_worker_group()[PLACEMENT_GROUP] == group


# ------------------------------------------------------------------ the janitor
@dataclass
class FakeCluster:
    """Actor states by id and placement group states by hex id; what was removed."""

    actors: dict[str, str] = field(default_factory=dict)  # id -> ALIVE / DEAD
    groups: dict[str, str] = field(default_factory=dict)  # hex id -> CREATED / REMOVED
    removed: list[str] = field(default_factory=list)
    lookups: list[tuple[str, str]] = field(default_factory=list)  # (actor id, address)

    def get_actor(self, actor_id: str, address: str | None = None, **kwargs: Any):
        self.lookups.append((actor_id, address))
        state = self.actors.get(actor_id)
        return None if state is None else SimpleNamespace(actor_id=actor_id, state=state)

    def placement_group_table(self, group=None) -> dict:
        state = self.groups.get(group.id.hex())
        return {} if state is None else {"state": state}

    def remove_placement_group(self, group) -> None:
        self.removed.append(group.id.hex())
        self.groups[group.id.hex()] = "REMOVED"


@pytest.fixture
def cluster(swap) -> FakeCluster:
    """A fake cluster behind Ray's State API and placement group calls."""
    fake = FakeCluster()
    swap(ray_state.get_actor, fake.get_actor, ray_state)
    swap(placement_groups.placement_group_table, fake.placement_group_table, placement_groups)
    swap(placement_groups.remove_placement_group, fake.remove_placement_group, placement_groups)
    return fake


def janitor(swap, dashboard: str = DASHBOARD) -> PlacementGroupJanitor:
    """A janitor set up in a main process whose Ray has (or has not) a dashboard."""
    info = {"address": "127.0.0.1:6379", "dashboard_url": dashboard, "num_cpus": 2.0}
    swap(ray_runtime.describe_ray, lambda: info, ray_runtime)
    made = PlacementGroupJanitor()
    made.setup()
    return made


def ended(trial_id: str, group: str | None, controller: str | None) -> SimpleNamespace:
    result = {"student_ap": 0.1}
    if group:
        result[PLACEMENT_GROUP] = group
    if controller:
        result[CONTROLLER] = controller
    return SimpleNamespace(trial_id=trial_id, last_result=result)


def test_a_dead_controllers_group_is_removed_a_live_ones_kept(cluster, swap) -> None:
    """Ended trials' groups: removed once their controller is dead or gone from the State
    API; kept (and retried later) while it is still alive; an already removed group is not
    removed twice. Lookups go to this cluster's dashboard."""
    dead, gone, alive, done = group_id(), group_id(), group_id(), group_id()
    cluster.actors = {"c-dead": "DEAD", "c-alive": "ALIVE", "c-done": "DEAD"}
    cluster.groups = {dead: "CREATED", gone: "CREATED", alive: "CREATED", done: "REMOVED"}
    cleaner = janitor(swap)
    cleaner.on_trial_complete(1, [], ended("t1", dead, "c-dead"))
    cleaner.on_trial_error(1, [], ended("t2", gone, "c-gone"))
    cleaner.on_trial_complete(1, [], ended("t3", alive, "c-alive"))
    cleaner.on_trial_complete(1, [], ended("t4", done, "c-done"))

    cleaner.on_step_begin(2, [])

    assert sorted(cluster.removed) == sorted([dead, gone])
    assert {address for _, address in cluster.lookups} == {DASHBOARD}
    assert cluster.groups[alive] == "CREATED"

    cluster.actors["c-alive"] = "DEAD"  # the stopped driver is gone now
    cluster.lookups.clear()
    time.sleep(SWEEP_INTERVAL_S)
    cleaner.on_step_begin(3, [])
    assert sorted(cluster.removed) == sorted([dead, gone, alive])
    assert [actor for actor, _ in cluster.lookups] == ["c-alive"]  # the others were done


def test_sweeps_wait_out_the_interval(cluster, swap) -> None:
    """A step right after a sweep does not sweep again (each looks each controller up)."""
    group = group_id()
    cluster.actors, cluster.groups = {"c": "ALIVE"}, {group: "CREATED"}
    cleaner = janitor(swap)
    cleaner.on_trial_complete(1, [], ended("t", group, "c"))
    cleaner.on_step_begin(2, [])
    cleaner.on_step_begin(3, [])
    assert len(cluster.lookups) == 1 and cluster.removed == []


def test_nothing_is_noted_without_a_dashboard_or_without_ids(cluster, swap) -> None:
    """No dashboard (no State API): the janitor leaves everything to Ray; a trial whose
    report carries no group or no controller is never looked up."""
    group = group_id()
    cluster.actors, cluster.groups = {"c": "DEAD"}, {group: "CREATED"}
    blind = janitor(swap, dashboard="")
    blind.on_trial_complete(1, [], ended("t", group, "c"))
    blind.on_step_begin(2, [])
    blind.on_experiment_end([])
    seeing = janitor(swap)
    seeing.on_trial_complete(1, [], ended("a", group, None))
    seeing.on_trial_error(1, [], ended("b", None, "c"))
    seeing.on_trial_complete(1, [], SimpleNamespace(trial_id="c", last_result=None))
    seeing.on_step_begin(2, [])
    assert cluster.lookups == [] and cluster.removed == []


def test_the_experiments_end_waits_for_stopping_controllers(cluster, swap) -> None:
    """At the end of the search the janitor sweeps until every noted group is gone: a
    controller still stopping is waited for, one sweep interval at a time."""
    group = group_id()
    cluster.actors, cluster.groups = {"c": "ALIVE"}, {group: "CREATED"}
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        cluster.actors["c"] = "DEAD"  # the controller finishes stopping meanwhile

    cleaner = janitor(swap)
    cleaner.on_trial_complete(1, [], ended("t", group, "c"))
    swap(time.sleep, sleep, time)
    cleaner.on_experiment_end([])
    assert cluster.removed == [group]
    assert len(cluster.lookups) == 2 and sleeps and set(sleeps) == {SWEEP_INTERVAL_S}
