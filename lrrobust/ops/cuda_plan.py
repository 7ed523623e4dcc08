"""The CUDA kernels' launch plans (paper Sec. 4's op on a GPU), computed on the host by the compiled planner.

``csrc/cuda/lr_plan.cuh`` decides, for a call's sizes, each pass's block shape, whether its haloed tile fits in
shared memory, and how the gather pass splits the batch and its tiles so that it launches a few waves of blocks
while the geo_prior partial sums stay under a memory cap. The same code runs on the GPU's host side; here it is
reached through ``torch.ops.lrrobust.cuda_launch_plan`` (always compiled, no GPU needed) so tests and tools can
check what a GPU would launch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrrobust.ops import library

H100_SMS = 132  # multiprocessors of an H100 SXM / H200, the planner's default target
FIELDS = ("tw", "th", "tiled", "smem", "rh", "rw", "tiles_x", "tiles_y", "n_chunks", "n_per", "tiles_per_block",
          "tile_slots", "rows_per_thread")


@dataclass(frozen=True)
class PassPlan:
    """One pass's launch: blocks of tw x th threads, a haloed tile of rh x rw pixels in ``smem`` bytes of shared
    memory when ``tiled``; for the gather pass, the batch in ``n_chunks`` chunks of ``n_per`` images and the
    tiles in ``tile_slots`` runs of ``tiles_per_block``; for the forward's fast path, ``rows_per_thread`` output rows
    per thread."""

    tw: int
    th: int
    tiled: bool
    smem: int
    rh: int
    rw: int
    tiles_x: int
    tiles_y: int
    n_chunks: int
    n_per: int
    tiles_per_block: int
    tile_slots: int
    rows_per_thread: int
    groups: int

    @property
    def blocks(self) -> int:
        """Thread blocks of the launch: (runs of tiles) x groups x (images or batch chunks)."""
        return self.tile_slots * self.groups * self.n_chunks


@dataclass(frozen=True)
class LaunchPlan:
    """The plans of the window passes and of the gather pass, and the gather's partial sums. ``forward`` is what
    the forward and the statistics pass launch: the row-stacked plan where it applies (stride 1, dilation 1, its
    tile fits), else ``window``, the one-output-per-thread plan."""

    forward: PassPlan
    window: PassPlan
    gather: PassPlan
    partial_entries: int  # G*K*K per slot, one slot per gather block per group

    def partial_bytes(self, dtype: torch.dtype) -> int:
        return self.partial_entries * (8 if dtype == torch.float64 else 4)


def plan_limits() -> dict[str, int]:
    """The planner's production limits, from the compiled library."""
    smem, budget, cap, waves = torch.ops.lrrobust.cuda_plan_limits()
    return {"smem_limit": smem, "partial_budget": budget, "partial_cap": cap, "min_waves": waves}


def cuda_launch_plan(n: int, channels: int, groups: int, height: int, width: int, kernel_size: int, stride: int = 1,
                     dilation: int = 1, dtype: torch.dtype = torch.bfloat16, sm_count: int = H100_SMS,
                     smem_limit: int | None = None, partial_budget: int | None = None,
                     partial_cap: int | None = None) -> LaunchPlan:
    """What the CUDA op would launch for value (n, channels, height, width) in ``groups`` groups on a GPU with
    ``sm_count`` multiprocessors (limits default to the production ones)."""
    if not library.LOADED:
        raise RuntimeError(f"lrrobust._C is not built: {library.LOAD_ERROR}")
    limits = plan_limits()
    element_size = torch.empty((), dtype=dtype).element_size()
    values = torch.ops.lrrobust.cuda_launch_plan(
        n, channels, groups, height, width, kernel_size, stride, dilation, element_size,
        limits["smem_limit"] if smem_limit is None else smem_limit,
        limits["partial_budget"] if partial_budget is None else partial_budget,
        limits["partial_cap"] if partial_cap is None else partial_cap,
        limits["min_waves"] * sm_count,
    )
    forward_pass, window_pass, gather_pass = (
        PassPlan(**{k: (bool(v) if k == "tiled" else v) for k, v in zip(FIELDS, values[i: i + len(FIELDS)])},
                 groups=groups)
        for i in range(0, 3 * len(FIELDS), len(FIELDS))
    )
    entries = groups * kernel_size * kernel_size * gather_pass.n_chunks * gather_pass.tile_slots
    return LaunchPlan(forward=forward_pass, window=window_pass, gather=gather_pass, partial_entries=entries)
