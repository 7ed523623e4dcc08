"""``--executor slurm``: the study's cells as one Slurm job array, submitted through submitit
(https://github.com/facebookincubator/submitit), ``--jobs`` of them running at a time (``sbatch --array=...%JOBS``);
a retried cell is a job of its own.

Each job asks for the spec's ``[cluster]`` (cpus, gpus, processes, memory_gb, partition, time, account, setup;
``--partition``, ``--time``, ``--cpus-per-cell``, ``--gpus-per-cell`` and ``--processes-per-cell`` override them) on
one node, as one task (``--nodes=1 --ntasks-per-node=1 --gpus-per-node=G --cpus-per-task=C``), and runs the cell on
its GPUs (Slurm sets CUDA_VISIBLE_DEVICES): a cell of more than one GPU, or of ``processes`` CPU processes, under
torchrun inside the job (``lrrobust.executors.ranks``), its ``cpus`` shared by its processes as torch threads.
submitit keeps its pickles and its own logs in ``OUT/jobs/slurm/``; the cell's output goes to its log in
``OUT/jobs/`` (``lrrobust.executors.work``). Slurm jobs outlive the study's process: run the same command again and
it waits for the cells they hold instead of starting them twice.

``cluster="local"`` runs the jobs as processes on this machine with Slurm's interface (submitit's LocalExecutor, all
of an array's jobs at once): what the tests use where there is no Slurm.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lrrobust.errors import EnvironmentFailure, UserError
from lrrobust.executors import Outcome, error_line, require
from lrrobust.executors.resources import Resources

JOB_NAME = "lrrobust-study"


class SlurmExecutor:
    name = "slurm"
    array = True

    def __init__(self, folder: Path, resources: Resources, jobs: int, cluster: str = "slurm") -> None:
        self.submitit = require("submitit", "slurm", "slurm")
        if resources.time_min is None:
            raise UserError("--executor slurm needs a time limit per cell: time = \"HH:MM:SS\" in the spec's "
                            "[cluster], or --time")
        for tool in ("sbatch", "srun") if cluster == "slurm" else ():  # submitit submits with sbatch, runs with srun
            if shutil.which(tool) is None:
                raise EnvironmentFailure(tool, "not found on PATH; run the study where Slurm jobs are submitted (a "
                                         "login node)", action="--executor slurm needs")
        self.folder = Path(folder)
        self.resources = resources
        self.jobs = jobs
        self.cluster = cluster
        self._executor: Any = None
        self._running: list[Any] = []

    def __enter__(self) -> SlurmExecutor:  # noqa: PYI034
        r = self.resources
        executor = self.submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        parameters: dict[str, Any] = {
            "name": JOB_NAME, "timeout_min": r.time_min, "cpus_per_task": r.cores, "gpus_per_node": r.gpus,
            "nodes": 1, "tasks_per_node": 1, "slurm_array_parallelism": self.jobs,
            "mem_gb": r.memory_gb, "slurm_partition": r.partition, "slurm_account": r.account,
            "slurm_setup": list(r.setup) or None,
        }
        executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
        self._executor = executor
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def submit(self, works: list[Any]) -> list[Any]:
        from lrrobust.executors.work import process_id, run_work

        n = len(works)
        r = self.resources
        device = "cuda" if r.gpus else "cpu"
        try:
            jobs = self._executor.map_array(run_work, works, [device] * n, [r.threads] * n, [process_id()] * n,
                                            [r.ranks] * n)
        except Exception as e:  # noqa: BLE001 - sbatch refused the array (a partition, an account, a limit)
            raise EnvironmentFailure("sbatch", error_line(e), action="cannot submit the cells' jobs with") from None
        self._running.extend(jobs)
        return jobs

    def poll(self) -> list[tuple[Any, Outcome]]:
        ended = [job for job in self._running if job.done()]
        for job in ended:
            self._running.remove(job)
        return [(job, self._outcome(job)) for job in ended]

    def _outcome(self, job: Any) -> Outcome:
        utils = self.submitit.core.utils
        try:
            return Outcome(result=job.result())
        except utils.FailedJobError as e:  # the cell raised; submitit carries its traceback as text
            return failed_outcome(str(e))
        except utils.UncompletedJobError:  # killed, out of memory, time limit, preempted, node lost
            return Outcome(message=f"its Slurm job {job.job_id} ended without a result (state {job.state})",
                           lost=True)

    def queued(self) -> int:
        return sum(job.state == "PENDING" for job in self._running)

    def cancel(self) -> None:
        for job in self._running:
            job.cancel(check=False)
        self._running.clear()


def failed_outcome(trace: str) -> Outcome:
    """The outcome of a job whose cell raised, from the traceback submitit sends back: its last line,
    'module.TypeName: message'; a mistake in the input (lrrobust.errors.UserError) stays one, and submitit's own
    stop at the time limit (it raises in the cell a minute and a half before) is a lost worker."""
    lines = [line for line in trace.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "the job failed without a traceback"
    kind, _, message = last.partition(": ")
    if kind == "submitit.core.utils.UncompletedJobError":  # submitit stopped it at the time limit
        return Outcome(message=f"its Slurm job was stopped ({message})", lost=True)
    if kind == "lrrobust.errors.UserError":
        return Outcome(error=UserError(message), message=message)
    if kind == "lrrobust.errors.EnvironmentFailure":
        return Outcome(message=message)
    return Outcome(message=f"{kind.rsplit('.', 1)[-1]}: {message}" if message else last)
