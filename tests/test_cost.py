"""FLOP counts against hand computation, calibration against the published latencies."""

import pytest

from autofednlp.config import ConfigError, CostConfig
from autofednlp.cost.clock import RoundCost, SimClock, client_cost
from autofednlp.cost.devices import (
    BERT_BASE,
    DeviceProfile,
    assign_devices,
    calibration_flops,
    get_profile,
)
from autofednlp.cost.flops import (
    ModelShape,
    fill_cache_flops,
    layer_forward_flops,
    train_step_flops,
)
from autofednlp.model.spec import TuneSpec

TINY = ModelShape(num_layers=2, hidden=4, intermediate=8, num_labels=3)


def test_tiny_layer_forward_by_hand():
    # weights per layer: 4*4*4 (QKVO) + 2*4*8 (FFN) = 64 + 64 = 128
    # seq 3: dense 2*128*3 = 768; attention 2*2*3*3*4 = 144
    assert TINY.layer_weights == 128
    assert layer_forward_flops(TINY, 3) == 768 + 144


@pytest.mark.parametrize(
    "part, cached, expected_per_seq",
    [
        # full: forward 2 layers (2*912) + backward 2x forward (2*2*912) + head 3*2*(16+12)
        (TuneSpec("full", 2), False, 2 * 912 + 4 * 912 + 168),
        # freeze depth 1: forward 2 layers; backward of the trained layer: input gradients
        # (912, its attention products twice: +144) and weight gradients (768), less the Q, K, V
        # input gradients the frozen input does not need (2*3*4*4*3 = 288); head
        (TuneSpec("freeze", 1), False, 2 * 912 + (912 + 144 + 768 - 288) + 168),
        # bottleneck d=1 w=2: adapter 2*4*2 = 16 weights -> 2*16*3 = 96 FLOPs forward;
        # forward 912 (frozen) + 912 + 96; backward only the adapter's (2*96): nothing below it
        # in its layer needs a gradient; head 168
        (TuneSpec("bottleneck", 1, 2), False, 912 + 912 + 96 + 192 + 168),
        # the same with the cache: the frozen layer is not run
        (TuneSpec("bottleneck", 1, 2), True, 912 + 96 + 192 + 168),
        # depth 0: only the head trains
        (TuneSpec("bottleneck", 0, 2), True, 168),
    ],
)
def test_train_step_flops_by_hand(part, cached, expected_per_seq):
    assert train_step_flops(TINY, part, batch=5, seq_len=3, cached=cached) == 5 * expected_per_seq


def test_cache_fill_is_the_frozen_forward():
    part = TuneSpec("bottleneck", 1, 2)
    full = train_step_flops(TINY, part, 1, 3, cached=False)
    cached = train_step_flops(TINY, part, 1, 3, cached=True)
    assert fill_cache_flops(TINY, part, 1, 3) == full - cached == 912


def test_calibration_reproduces_published_full_ft_latencies():
    for name, published_s in [("jetson-tx2", 1.86), ("rpi4", 34.02), ("jetson-nano", 3.72)]:
        assert get_profile(name).compute_s(calibration_flops()) == pytest.approx(published_s)
    # the brief's rough effective rates: TX2 ~300 GFLOP/s, Pi ~16 GFLOP/s
    assert get_profile("jetson-tx2").flops_per_s == pytest.approx(300e9, rel=0.05)
    assert get_profile("rpi4").flops_per_s == pytest.approx(16e9, rel=0.05)


@pytest.mark.parametrize("depth", [2, 4, 8, 12])
def test_adapter_with_cache_close_to_published_per_layer_latency(depth):
    # Published (TX2, BERT-base, batch 4, len 256): about 0.02 s + 0.09 s per trained layer.
    # Not at depth 1: the lowest trained layer runs no backward below its adapter (what
    # PyTorch computes, tests/test_flops.py), so one trained layer counts about 0.054 s.
    tx2 = get_profile("jetson-tx2")
    flops = train_step_flops(BERT_BASE, TuneSpec("bottleneck", depth, 64), 4, 256, cached=True)
    assert tx2.compute_s(flops) == pytest.approx(0.02 + 0.09 * depth, rel=0.25)


def test_adapter_without_cache_depth0_close_to_published():
    # Published: 0.53 s at depth 0 without the cache (the whole frozen forward still runs).
    tx2 = get_profile("jetson-tx2")
    flops = train_step_flops(BERT_BASE, TuneSpec("bottleneck", 0, 64), 4, 256)
    assert tx2.compute_s(flops) == pytest.approx(0.53, rel=0.2)


def test_sequence_length_64_costs_about_a_quarter():
    full = TuneSpec("full", 12)
    ratio = train_step_flops(BERT_BASE, full, 4, 64) / train_step_flops(BERT_BASE, full, 4, 256)
    assert ratio == pytest.approx(0.25, abs=0.02)


def test_client_cost_and_round_is_slowest_client():
    cfg = CostConfig(upload_mb_per_s=1.0, download_mb_per_s=2.0)
    a = client_cost(cfg, compute_s=10.0, bytes_down=2_000_000, bytes_up=1_000_000)
    assert (a.download_s, a.upload_s, a.total_s) == (1.0, 1.0, 12.0)
    assert a.energy_j == 12 * 10 + 4 * 2
    b = client_cost(cfg, compute_s=30.0, bytes_down=0, bytes_up=0)
    rc = RoundCost.of([a, b])
    assert rc.duration_s == 30.0 and rc.energy_j == a.energy_j + b.energy_j
    clock = SimClock()
    clock.advance(rc)
    clock.advance(rc)
    assert clock.time_s == 60.0 and clock.bytes_up == 2_000_000


@pytest.mark.parametrize("n", [1, 7, 100])
def test_assign_devices_follows_mix_and_seed(n):
    mix = {"jetson-tx2": 0.5, "jetson-nano": 0.3, "rpi4": 0.2}
    devices = assign_devices(n, mix, seed=1)
    assert len(devices) == n
    for name, share in mix.items():
        assert abs(devices.count(name) - share * n) < 1
    assert devices == assign_devices(n, mix, seed=1)


def test_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match="cost.devices.*'pixel-9'"):
        get_profile("pixel-9")


def test_profile_file_round_trip(tmp_path):
    p = DeviceProfile("lab-box", 123e9, "measured")
    p.save(tmp_path / "lab.json")
    assert get_profile(str(tmp_path / "lab.json")) == p
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="bad.json"):
        DeviceProfile.load(tmp_path / "bad.json")
