"""The CUDA launch planner (csrc/cuda/lr_plan.cuh), run on the host: what a GPU would launch, checked without one.

The kernels themselves are checked against the reference in the CPU emulator (test_cuda_emulated.py) and on a
GPU (test_ops_cuda.py); these tests pin the planner's choices: tiles clipped to the map, a few waves of gather
blocks, and the geo_prior partial sums under their memory cap.
"""

from __future__ import annotations

import random

import pytest
import torch

from lrrobust.ops import library
from lrrobust.ops.cuda_plan import H100_SMS, cuda_launch_plan, plan_limits

pytestmark = pytest.mark.skipif(not library.LOADED, reason="lrrobust._C is not built")

MiB = 1 << 20


def test_limits_are_the_production_ones():
    limits = plan_limits()
    assert limits["smem_limit"] == 48 * 1024
    assert limits["partial_cap"] * 4 == 128 * MiB
    assert limits["partial_budget"] < limits["partial_cap"]
    assert limits["min_waves"] >= 2


def test_large_window_on_a_small_map_is_tiled():
    # CIFAR-size map with a full 63 x 63 window: the haloed tile clipped to the 32 x 32 map fits in 48 KiB.
    plan = cuda_launch_plan(8, 64, 8, 32, 32, 63, dtype=torch.bfloat16)
    assert plan.window.tiled
    assert (plan.window.rh, plan.window.rw) == (32, 32)
    assert plan.window.smem <= 48 * 1024
    # Unclipped, the tile would span (8 - 1) + 62 + 1 rows by (32 - 1) + 62 + 1 columns: 70 x 94 pixels of key and
    # 8 value channels in bf16 plus the 63 x 63 prior in float, over 48 KiB.
    assert 63 * 63 * 4 + 70 * 94 * (2 + 8 * 2) > 48 * 1024


@pytest.mark.parametrize("kernel_size,dilation,size", [(9, 2, 12), (17, 3, 9), (31, 1, 28), (7, 4, 14)])
def test_clipped_tiles_stay_inside_the_map(kernel_size, dilation, size):
    for dtype in (torch.bfloat16, torch.float32):  # (float64 at K = 31: 8 channels of the whole map exceed 48 KiB)
        plan = cuda_launch_plan(2, 16, 2, size, size + 3, kernel_size, dilation=dilation, dtype=dtype)
        assert plan.window.tiled, (kernel_size, dilation, size, dtype)
        assert plan.window.rh <= size and plan.window.rw <= size + 3


def test_large_window_keeps_a_few_waves_of_gather_blocks():
    # K = 111 on 56 x 56 at batch 32: the budget alone allowed 3 batch chunks, under half a wave of an H100.
    plan = cuda_launch_plan(32, 64, 8, 56, 56, 111, dtype=torch.bfloat16, sm_count=H100_SMS)
    assert plan.gather.blocks >= plan_limits()["min_waves"] * H100_SMS
    assert plan.partial_bytes(torch.bfloat16) <= 128 * MiB
    assert plan.gather.n_chunks * plan.gather.n_per >= 32 > (plan.gather.n_chunks - 1) * plan.gather.n_per


def test_full_window_on_a_large_map_caps_the_partial_sums():
    # 224 x 224 with the full 447 x 447 window: one batch chunk of one slot per tile needed 8 groups x 447^2
    # offsets x 196 tiles = 313M partial sums (1.25 GB); blocks now visit runs of tiles to stay under the cap.
    plan = cuda_launch_plan(32, 64, 8, 224, 224, 447, dtype=torch.float32)
    tiles = plan.gather.tiles_x * plan.gather.tiles_y
    assert 8 * 447 * 447 * tiles * 4 > 1.25e9
    assert plan.partial_bytes(torch.float32) <= 128 * MiB
    assert plan.gather.tiles_per_block > 1
    assert plan.gather.tile_slots * plan.gather.tiles_per_block >= tiles > (plan.gather.tile_slots - 1) * (
        plan.gather.tiles_per_block)


def test_a_prior_larger_than_the_cap_gets_one_slot():
    plan = cuda_launch_plan(4, 16, 16, 64, 64, 31, dtype=torch.float32, partial_cap=100)
    assert plan.gather.n_chunks == 1 and plan.gather.tile_slots == 1
    assert plan.partial_entries == 16 * 31 * 31


@pytest.mark.parametrize("channels,size", [(100, 56), (200, 28), (400, 14), (800, 7)])
def test_lr_net26_stages_are_tiled_and_fill_the_gpu(channels, size):
    # LR-Net-26 (Sec. 5): 7 x 7 windows, 8 channels per group, batch 32.
    for dtype in (torch.bfloat16, torch.float32):
        plan = cuda_launch_plan(32, channels, channels // 8, size, size, 7, dtype=dtype)
        assert plan.window.tiled and plan.gather.tiled
        assert plan.window.smem <= 48 * 1024 and plan.gather.smem <= 48 * 1024
        assert plan.gather.blocks >= plan_limits()["min_waves"] * H100_SMS
        assert plan.partial_bytes(dtype) <= 16 * MiB  # within the budget, far under the cap


def test_budget_splits_the_batch_into_single_images_when_it_can():
    plan = cuda_launch_plan(6, 16, 2, 20, 20, 3)
    assert (plan.gather.n_chunks, plan.gather.n_per) == (6, 1)


def test_plans_cover_every_image_and_tile_within_the_limits():
    rng = random.Random(0)
    limits = plan_limits()
    for _ in range(300):
        n = rng.choice([0, 1, 2, 7, 32, 129])
        groups = rng.choice([1, 2, 8])
        channels = groups * rng.choice([1, 3, 8, 17])
        height, width = rng.randint(1, 300), rng.randint(1, 300)
        kernel_size = rng.choice([1, 3, 7, 15, 31, 63, 127])
        stride, dilation = rng.choice([1, 2, 3]), rng.choice([1, 2, 5])
        dtype = rng.choice([torch.bfloat16, torch.float32, torch.float64])
        cap = rng.choice([limits["partial_cap"], 10_000, 1])
        plan = cuda_launch_plan(n, channels, groups, height, width, kernel_size, stride, dilation, dtype,
                                sm_count=rng.choice([1, 132]), partial_cap=cap)
        label = (n, channels, groups, height, width, kernel_size, stride, dilation, dtype, cap)
        out_h, out_w = -(-height // stride), -(-width // stride)
        w, g = plan.window, plan.gather
        assert w.tiles_x * w.tw >= out_w and w.tiles_y * w.th >= out_h, label
        assert g.tiles_x * g.tw >= width and g.tiles_y * g.th >= height, label
        assert w.tw * w.th % 32 == 0 and g.tw * g.th % 32 == 0 and w.tw * w.th <= 256, label
        for p, rows, cols in ((w, height, width), (g, out_h, out_w)):
            if p.tiled:
                assert p.smem <= limits["smem_limit"] and p.rh <= rows and p.rw <= cols, label
        tiles = g.tiles_x * g.tiles_y
        assert g.tile_slots * g.tiles_per_block >= tiles > (g.tile_slots - 1) * g.tiles_per_block, label
        assert g.n_chunks * g.n_per >= max(n, 1) > (g.n_chunks - 1) * g.n_per, label
        assert plan.partial_entries <= max(cap, groups * kernel_size**2), label


def test_bad_sizes_are_refused_with_one_line():
    with pytest.raises(RuntimeError, match="kernel_size must be odd"):
        cuda_launch_plan(1, 8, 2, 8, 8, 4)
    with pytest.raises(RuntimeError, match="groups <= channels"):
        cuda_launch_plan(1, 2, 4, 8, 8, 3)
