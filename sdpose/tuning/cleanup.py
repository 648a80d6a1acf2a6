"""Free the training workers' CPUs of trials that Tune ended by killing their driver.

When ASHA stops a trial (or the time budget ends it), Tune kills the trial's driver, and
with it the Ray Train controller, before the controller can remove its workers' placement
group; the group outlives them (Ray scopes it to the job) and the next trial waits for its
CPUs forever. Ray Train V2 runs a cleaner actor for this, but it finds the cluster through
the State API without an address and so picks another (or a dead) cluster wherever several
Ray clusters share a machine or a stale /tmp/ray/ray_current_cluster lies around
(ray-project/ray#54305, #65443). Here the controller notes its group and its own actor id
(PlacementGroupRecorder), the trial reports both, and the main process, which knows its
dashboard, removes the group once the controller is dead (PlacementGroupJanitor).
"""

from __future__ import annotations

import time

import ray
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.tune import Callback
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group
from ray.util.state import get_actor

from sdpose.ray_runtime import describe_ray

PLACEMENT_GROUP = "placement_group_id"
CONTROLLER = "controller_actor_id"
SWEEP_INTERVAL_S = 1.0

# A trial's controller runs in a process of its own: one worker group per process.
_recorded: dict[str, str] = {}


def recorded_worker_group() -> dict[str, str]:
    """{PLACEMENT_GROUP: id, CONTROLLER: id} of this controller's workers, once started."""
    return dict(_recorded)


class PlacementGroupRecorder(WorkerGroupCallback):
    """Runs in the Train controller: notes the worker group's placement group.

    Ray hands a RunConfig callback that is not a UserCallback to the controller as an
    internal one, which is what gives it the worker group.
    """

    def after_worker_group_start(self, worker_group) -> None:

        handle = worker_group.get_worker_group_state().placement_group_handle
        _recorded[PLACEMENT_GROUP] = handle.placement_group.id.hex()
        _recorded[CONTROLLER] = ray.get_runtime_context().get_actor_id()


class PlacementGroupJanitor(Callback):
    """Runs in the main process: removes ended trials' groups once their controller died.

    A group its controller removed on a normal exit is simply gone. Without a dashboard
    (no State API) nothing is removed and Ray's own cleaner is the only one left.
    """

    def __init__(self) -> None:
        self._pending: dict[str, str] = {}  # placement group id -> controller actor id
        self._dashboard = ""
        self._last_sweep = 0.0

    def setup(self, **info) -> None:

        self._dashboard = describe_ray()["dashboard_url"]

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._note(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._note(trial)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._pending and time.monotonic() - self._last_sweep >= SWEEP_INTERVAL_S:
            self._sweep()

    def on_experiment_end(self, trials: list, **info) -> None:
        deadline = time.monotonic() + 30  # stopped drivers take a moment to go
        while self._pending and time.monotonic() < deadline:
            self._sweep()
            time.sleep(SWEEP_INTERVAL_S)

    def _note(self, trial) -> None:
        result = trial.last_result or {}
        if result.get(PLACEMENT_GROUP) and result.get(CONTROLLER) and self._dashboard:
            self._pending[result[PLACEMENT_GROUP]] = result[CONTROLLER]

    def _sweep(self) -> None:

        self._last_sweep = time.monotonic()
        for group_id, controller in list(self._pending.items()):
            state = get_actor(controller, address=self._dashboard, timeout=10)
            if state is not None and state.state != "DEAD":
                continue  # still stopping: removing its group now would make it restart
            group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id)))
            if placement_group_table(group).get("state") not in (None, "REMOVED"):
                remove_placement_group(group)
            del self._pending[group_id]
