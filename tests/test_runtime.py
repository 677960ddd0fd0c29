"""Device and precision (runtime.py) on a machine without CUDA: resolution, one-line errors,
autocast on the CPU, and CUDA's out-of-memory error turned into advice."""

import pytest
import torch
from small_run import small_config, small_overrides

from autofednlp import runtime as rt
from autofednlp.cli import main
from autofednlp.client.train import evaluate, local_train
from autofednlp.config import ClientConfig, ConfigError, load_config
from autofednlp.data.federated import TokenizedSplit
from autofednlp.model.build import build_model, model_shape, trainable_state
from autofednlp.model.kinds import TuneSpec
from autofednlp.run import run_experiment


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rt._runtime.cache_clear()
    yield
    rt._runtime.cache_clear()


def test_auto_is_the_cpu_without_cuda(no_cuda):
    assert rt.resolve_device("auto") == torch.device("cpu")
    assert rt.runtime_for(load_config()) == rt.CPU  # the defaults: auto, fp32
    assert rt.client_gpu_share(load_config()) == 0.0  # Flower actors then ask for no GPU


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_cuda_is_a_one_line_config_error(no_cuda, name):
    with pytest.raises(ConfigError, match=r"no CUDA here .*use auto or cpu") as e:
        rt.runtime_for(load_config(None, [f"runtime.device={name}"]))
    assert "\n" not in str(e.value) and "runtime.device" in str(e.value)


def test_a_gpu_index_beyond_the_machine_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert rt.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="has 1 GPU"):
        rt.resolve_device("cuda:1")


def test_simulated_clients_get_a_gpu_share_only_when_the_run_uses_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    rt._runtime.cache_clear()
    try:
        assert rt.client_gpu_share(load_config()) == 0.25  # auto finds the GPU
        assert rt.client_gpu_share(load_config(None, ["runtime.device=cpu"])) == 0.0
        with pytest.raises(ConfigError, match="has 1 GPU"):
            rt.client_gpu_share(load_config(None, ["runtime.gpus_per_client=2"]))
    finally:
        rt._runtime.cache_clear()


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("runtime.device=gpu", "runtime.device = 'gpu': must be auto, cpu, cuda or cuda:N"),
        ("runtime.device=cuda:x", "runtime.device = 'cuda:x'"),
        ("runtime.precision=fp8", "runtime.precision = 'fp8': must be one of fp32, bf16, fp16"),
        ("runtime.gpus_per_client=0", "runtime.gpus_per_client = 0.0: must be > 0"),
    ],
)
def test_bad_runtime_values_name_the_field(override, fragment):
    with pytest.raises(ConfigError, match="^" + fragment.replace("(", r"\(")):
        load_config(None, [override])


def test_fp32_is_no_autocast_and_bf16_autocasts_on_the_cpu():
    a = torch.randn(4, 4)
    with rt.CPU.autocast():
        assert (a @ a).dtype == torch.float32
    with rt.Runtime(torch.device("cpu"), "bf16").autocast():
        assert (a @ a).dtype == torch.bfloat16
    assert rt.CPU.grad_scaler() is None
    assert rt.Runtime(torch.device("cpu"), "bf16").grad_scaler() is None
    assert rt.Runtime(torch.device("cpu"), "fp16").grad_scaler() is not None
    t = torch.ones(2)
    assert rt.CPU.to_device(t)[0] is t  # already there: no copy


def _toy_split(n: int = 48, seed: int = 0) -> TokenizedSplit:
    """Two classes told apart by their token ids: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    ids = torch.randint(1000, 1100, (n, 10), generator=g) + 1000 * labels[:, None]
    mask = torch.ones_like(ids)
    mask[::3, 6:] = 0
    return TokenizedSplit(ids, mask, labels)


def _train(tiny_model_dir, precision, kind="full", epochs=3):
    spec = TuneSpec(kind, 1, 8)
    model = build_model(tiny_model_dir, 2, spec, seed=0)
    shape, part = model_shape(tiny_model_dir, 2), TuneSpec(kind, 1, 8)
    cfg = ClientConfig(local_epochs=epochs, batch_size=8)
    runtime = rt.Runtime(torch.device("cpu"), precision)
    data = _toy_split()
    before = evaluate(model, data, shape, part, runtime=runtime)
    res = local_train(model, data, cfg, 1e-3, spec.boundary(2), shape, part, 7, runtime=runtime)
    after = evaluate(model, data, shape, part, runtime=runtime)
    return res, before, after, trainable_state(model)


def test_bf16_training_learns_and_stays_close_to_fp32(tiny_model_dir):
    res32, before, after32, w32 = _train(tiny_model_dir, "fp32")
    res16, _, after16, w16 = _train(tiny_model_dir, "bf16")
    assert after16.loss < 0.5 * before.loss and after16.accuracy == 1.0
    assert abs(after16.loss - after32.loss) < 0.1 * after32.loss
    assert abs(res16.train_loss - res32.train_loss) < 0.05 * res32.train_loss
    # the same FLOPs are counted whatever the precision: simulated time does not change
    assert res16.flops == res32.flops
    diff = sum(float((w16[n] - w32[n]).norm()) ** 2 for n in w32) ** 0.5
    norm = sum(float(w32[n].norm()) ** 2 for n in w32) ** 0.5
    assert 0 < diff / norm < 0.01


def test_fp16_with_loss_scaling_trains_on_the_cpu(tiny_model_dir):
    res, before, after, _ = _train(tiny_model_dir, "fp16", kind="bottleneck", epochs=1)
    assert res.steps == 6 and after.loss < before.loss


def test_a_bf16_run_counts_the_same_simulated_costs(tiny_model_dir, tmp_path):
    fp32 = small_config(tiny_model_dir, tmp_path / "a", "federation.rounds=1")
    fp32 = run_experiment(fp32, progress=False)
    cfg = small_config(
        tiny_model_dir, tmp_path / "b", "federation.rounds=1", "runtime.precision=bf16"
    )
    bf16 = run_experiment(cfg, progress=False)
    for key in ("sim_time_s", "bytes_up", "bytes_down", "energy_j"):
        assert bf16[key] == fp32[key], key
    assert abs(bf16["test_loss"] - fp32["test_loss"]) < 0.05 * fp32["test_loss"]


def test_cuda_out_of_memory_is_one_line_naming_what_to_lower(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("autofednlp.client.worker.local_train", oom)
    sets = [x for s in small_overrides(tiny_model_dir) for x in ("--set", s)]
    assert main(["run", *sets, "--run-dir", str(tmp_path / "r"), "--progress", "quiet"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1, err
    assert "ran out of memory while training client" in err[0]
    assert "client.batch_size (now 4)" in err[0] and "data.max_length (now 32)" in err[0]


def test_the_simulation_engine_message_names_the_gpu_share():
    cfg = load_config(None, ["runtime.device=cuda", "runtime.gpus_per_client=0.5"])
    msg = rt.oom_message(cfg, "cuda:0", "training client 3")
    assert "raise runtime.gpus_per_client, now 0.5" in msg and "bf16" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["bench", "--device", "cuda"], "--device = 'cuda': no CUDA here"),
        (["profile", "--device", "cuda:1"], "--device = 'cuda:1': no CUDA here"),
        (
            ["run", "--quiet", "--set", "runtime.device=cuda"],
            "runtime.device = 'cuda': no CUDA here",
        ),
    ],
)
def test_asking_for_cuda_without_it_exits_2_with_one_line(argv, fragment, tmp_path, capsys):
    run_dir = tmp_path / "run"
    extra = ["--run-dir", str(run_dir)] if argv[0] == "run" else []
    assert main([*argv, *extra]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and fragment in err[0], err
    assert not run_dir.exists()  # stopped before anything was written


def test_max_steps_stops_local_training_and_counts_what_was_trained(tiny_model_dir):
    """A trial's candidate keeping pace with keep's round: its first steps are exactly the
    uncapped run's first steps (same order, same seed), and examples, steps and FLOPs count
    only those."""
    spec = TuneSpec("bottleneck", 1, 8)
    shape, data = model_shape(tiny_model_dir, 2), _toy_split()
    cfg = ClientConfig(local_epochs=2, batch_size=8)
    results = {}
    for cap in (0, 3, 6, 7, 12):
        model = build_model(tiny_model_dir, 2, spec, seed=0)
        res = local_train(model, data, cfg, 1e-3, spec.boundary(2), shape, spec, 7, max_steps=cap)
        results[cap] = (res, trainable_state(model))
    full, _ = results[0]
    assert (full.steps, full.num_examples) == (12, 96)  # 2 epochs of 6 batches of 8
    assert results[12][0] == full  # a cap at the full count changes nothing
    assert all(torch.equal(results[12][1][k], v) for k, v in results[0][1].items())
    for cap in (3, 6, 7):
        res, _ = results[cap]
        assert (res.steps, res.num_examples) == (cap, 8 * cap)
        assert res.flops == pytest.approx(full.flops * cap / 12)
