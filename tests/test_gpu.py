"""The same code paths on CUDA: run by benchmarks/gpu_check.sh on a GPU machine, skipped
elsewhere (CI has no GPU)."""

import pytest
import torch
from small_run import small_config

from autofednlp import runtime as rt
from autofednlp.client.cache import ActivationCache
from autofednlp.client.train import evaluate, frozen_features, local_train
from autofednlp.config import ClientConfig
from autofednlp.data.federated import TokenizedSplit
from autofednlp.model.build import build_model, model_shape, trainable_state
from autofednlp.model.kinds import TuneSpec
from autofednlp.run import run_experiment

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

GPU = rt.Runtime(torch.device("cuda"), "fp32")


def _split(n: int = 40) -> TokenizedSplit:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    ids = torch.randint(1000, 1100, (n, 12), generator=g) + 1000 * labels[:, None]
    mask = torch.ones_like(ids)
    mask[::3, 7:] = 0
    return TokenizedSplit(ids, mask, labels)


def _model(tiny_model_dir, spec, runtime):
    model = build_model(tiny_model_dir, 2, spec, seed=0)
    for m in model.modules():  # the CPU and the GPU draw different dropout masks
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model.to(runtime.device)


def _train(tiny_model_dir, spec, runtime, cache=None, optimizer="sgd"):
    """Two epochs of local training. SGD by default: AdamW divides by the gradients' size, so
    a gradient that is ~0 on both devices can step by +-lr on one and -+lr on the other,
    which would hide how close the two really are."""
    model = _model(tiny_model_dir, spec, runtime)
    shape, part = model_shape(tiny_model_dir, 2), spec
    data = _split()
    res = local_train(
        model,
        data,
        ClientConfig(local_epochs=2, batch_size=8, optimizer=optimizer),
        0.05 if optimizer == "sgd" else 1e-3,
        spec.boundary(model.num_layers),
        shape,
        part,
        3,
        cache=cache,
        sample_ids=torch.arange(len(data)),
        runtime=runtime,
    )
    return res, trainable_state(model), model


@pytest.mark.parametrize(
    "spec", [TuneSpec("full", 0), TuneSpec("bottleneck", 1, 8), TuneSpec("lora", 2, 4)]
)
def test_cuda_training_matches_the_cpu_up_to_rounding(tiny_model_dir, spec):
    res_cpu, w_cpu, _ = _train(tiny_model_dir, spec, rt.CPU)
    res_gpu, w_gpu, model = _train(tiny_model_dir, spec, GPU)
    assert next(model.parameters()).is_cuda
    assert all(t.device.type == "cpu" for t in w_gpu.values())  # what travels is on the CPU
    assert res_gpu.flops == res_cpu.flops and res_gpu.steps == res_cpu.steps
    assert abs(res_gpu.train_loss - res_cpu.train_loss) < 1e-4
    for n in w_cpu:
        torch.testing.assert_close(w_gpu[n], w_cpu[n], rtol=1e-3, atol=1e-4)


def test_cuda_cache_gives_the_uncached_result(tiny_model_dir, tmp_path):
    spec = TuneSpec("bottleneck", 1, 8)
    _, plain, _ = _train(tiny_model_dir, spec, GPU)
    cache = ActivationCache("gpu-test", tmp_path)
    res, cached, _ = _train(tiny_model_dir, spec, GPU, cache)
    assert cache.misses == 40 and cache.hits == 40  # filled in epoch 1, read in epoch 2
    for n in plain:
        torch.testing.assert_close(cached[n], plain[n], rtol=1e-4, atol=1e-5)


def test_cuda_evaluation_and_frozen_features_match_the_cpu(tiny_model_dir):
    spec = TuneSpec("bottleneck", 1, 8)
    shape, part, data = model_shape(tiny_model_dir, 2), TuneSpec("bottleneck", 1, 8), _split()
    results = {}
    for runtime in (rt.CPU, GPU):
        model = _model(tiny_model_dir, spec, runtime)
        feats = frozen_features(model, data, 1, batch_size=16, runtime=runtime)
        assert feats[0].device.type == runtime.device.type
        plain = evaluate(model, data, shape, part, batch_size=16, runtime=runtime)
        cached = evaluate(model, data, shape, part, 16, 1, feats, runtime=runtime)
        assert abs(plain.loss - cached.loss) < 1e-5
        results[runtime.device.type] = plain
    assert abs(results["cuda"].loss - results["cpu"].loss) < 1e-4
    assert results["cuda"].accuracy == results["cpu"].accuracy


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_trains(tiny_model_dir, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    spec = TuneSpec("full", 0)
    runtime = rt.Runtime(torch.device("cuda"), precision)
    res32, w32, _ = _train(tiny_model_dir, spec, GPU, optimizer="adamw")
    res, w, _ = _train(tiny_model_dir, spec, runtime, optimizer="adamw")
    assert abs(res.train_loss - res32.train_loss) < 0.05 * res32.train_loss
    diff = sum(float((w[n] - w32[n]).norm()) ** 2 for n in w) ** 0.5
    norm = sum(float(w32[n].norm()) ** 2 for n in w) ** 0.5
    assert diff / norm < 0.01


def test_a_cuda_run_counts_the_same_simulated_costs(tiny_model_dir, tmp_path):
    cpu = small_config(tiny_model_dir, tmp_path / "c", "runtime.device=cpu")
    gpu = small_config(tiny_model_dir, tmp_path / "g", "runtime.device=cuda")
    cpu, gpu = run_experiment(cpu, progress=False), run_experiment(gpu, progress=False)
    for key in ("sim_time_s", "bytes_up", "bytes_down", "energy_j"):
        assert gpu[key] == cpu[key], key
    assert abs(gpu["test_accuracy"] - cpu["test_accuracy"]) <= 0.1
    state = torch.load(f"{gpu['run_dir']}/trainable_state.pt")
    assert all(t.device.type == "cpu" for t in state.values())


def test_real_cuda_out_of_memory_becomes_one_line():
    with pytest.raises(rt.OutOfDeviceMemory, match="ran out of memory while allocating"):
        with rt.oom_guard(None, "cuda", "allocating"):
            torch.empty(2**46, dtype=torch.uint8, device="cuda")  # 64 TiB
