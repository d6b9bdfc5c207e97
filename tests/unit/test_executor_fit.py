"""A placement the node cannot hold now is refused, whatever the scheduler believed."""

from __future__ import annotations

from conductor_contracts import events as ev
from conductor_executor.fit import misfit


def _placed(job_id: int, cores: tuple[int, ...], memory_mb: int = 100) -> ev.JobPlaced:
    return ev.JobPlaced(job_id=job_id, node="n", cores=cores, memory_mb=memory_mb)


def test_fits_an_empty_node_and_beside_other_jobs() -> None:
    assert misfit(_placed(1, (0, 1, 2, 3), 1000), cpus=4, memory_mb=1000, running=[]) is None
    assert misfit(_placed(2, (2, 3), 500), cpus=4, memory_mb=1000, running=[_placed(1, (0, 1), 500)]) is None


def test_cores_beyond_a_node_that_shrank() -> None:
    # Placed for 4 CPUs; the node re-registered with 1.
    assert misfit(_placed(1, (0, 3)), cpus=1, memory_mb=1000, running=[]) == "cores [3] are outside this node's 0..0"


def test_cores_a_running_job_holds() -> None:
    running = [_placed(1, (0, 1)), _placed(2, (2,))]
    why = misfit(_placed(3, (1, 2, 3)), cpus=4, memory_mb=1000, running=running)
    assert why == "cores [1, 2] are in use by job(s) 1, 2"


def test_memory_beyond_what_is_left() -> None:
    why = misfit(_placed(2, (1,), 600), cpus=2, memory_mb=1000, running=[_placed(1, (0,), 500)])
    assert why == "600M of memory asked, 500M of 1000M left"


def test_a_core_twice() -> None:
    assert misfit(_placed(1, (1, 1)), cpus=2, memory_mb=1000, running=[]) == "cores [1, 1] repeat a core"
