"""segcourse.benchmark: counts checked against hand-computed values."""

import pytest
import torch.nn as nn

from segcourse.benchmark import count_parameters, cpu_latency, format_table, gflops, profile


def test_parameters_and_flops_of_one_conv_by_hand():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    assert count_parameters(conv) == 8 * 3 * 3 * 3 + 8
    # one multiply-add (2 FLOPs) per weight per output pixel; the bias add is not counted
    assert gflops(conv, size=(10, 20)) == pytest.approx(2 * 8 * 3 * 9 * 10 * 20 / 1e9)


def test_flops_scale_with_pixels_and_mode_is_restored():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    small, big = gflops(net, (16, 16)), gflops(net, (32, 32))
    assert big == pytest.approx(4 * small)
    assert net.training


def test_latency_and_table():
    net = nn.Conv2d(3, 4, 3)
    assert cpu_latency(net, (32, 32), repeats=2) > 0
    row = {"model": "conv", **profile(net, (32, 32), repeats=2)}
    table = format_table([row])
    assert "conv" in table and f"{count_parameters(net):,}" in table
