import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from autofednlp.client.cache import ActivationCache  # noqa: E402
from autofednlp.data.tokenize import trim_batch  # noqa: E402
from autofednlp.model.build import build_from_encoder  # noqa: E402
from autofednlp.model.kinds import TuneSpec  # noqa: E402

MAX_LENGTH = 16
LENGTHS = [12, 5, 9, 3, 7, 10]  # variable lengths, so trimming and padding both matter
NUM_LAYERS = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors this small gain nothing from threads, and on a busy machine a second thread
    contending for a core made each test ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(spec: TuneSpec):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = build_from_encoder(BertModel(config), 3, spec, seed=0)
    with torch.no_grad():  # move zero-initialised outputs so every gradient is non-trivial
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model


def samples() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stored like the data layer stores them: right-padded to MAX_LENGTH."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (len(LENGTHS), MAX_LENGTH), generator=gen)
    mask = (torch.arange(MAX_LENGTH)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    return torch.arange(len(LENGTHS)), ids * mask, mask


def lookup(cache: ActivationCache, model, boundary: int, rows: list[int]):
    sid, ids, mask = samples()
    ids, mask = trim_batch(ids[rows], mask[rows])
    return cache.hidden_for(model, boundary, sid[rows], ids, mask)


def loss_and_grads(model, ids, mask, labels, boundary, hidden=None):
    torch.manual_seed(123)  # the same dropout masks in the trainable layers for both passes
    model.zero_grad()
    loss = F.cross_entropy(model(ids, mask, boundary=boundary, boundary_hidden=hidden), labels)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "spec", [TuneSpec("bottleneck", 2, 8), TuneSpec("freeze", 1), TuneSpec("lora", 2, 4)]
)
@pytest.mark.parametrize("on_disk", [False, True])
def test_cached_step_matches_uncached(spec, on_disk, tmp_path):
    model = tiny_model(spec)
    model.train()
    b = spec.boundary(NUM_LAYERS)
    budget = 0 if on_disk else 2**20  # budget 0: every hit is read back from disk
    cache = ActivationCache("ns", tmp_path if on_disk else None, memory_budget_bytes=budget)
    # filled by batches composed differently from the one read below
    assert lookup(cache, model, b, [0, 1, 2])[1] == 3
    assert lookup(cache, model, b, [3, 4, 5])[1] == 3

    sid, ids, mask = samples()
    ids, mask = trim_batch(ids, mask)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    hidden, misses = cache.hidden_for(model, b, sid, ids, mask)
    assert misses == 0 and hidden.dtype == torch.float32
    assert hidden.shape == (len(LENGTHS), max(LENGTHS), 32)

    loss_ref, grads_ref = loss_and_grads(model, ids, mask, labels, b)
    loss, grads = loss_and_grads(model, ids, mask, labels, b, hidden)
    assert abs(loss - loss_ref) < 1e-5
    assert grads.keys() == grads_ref.keys() and len(grads) > 0
    for name, g in grads.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(g, grads_ref[name], rtol=1e-5, atol=1e-5, msg=name)
    assert cache.stats()["hits"] == len(LENGTHS)


def test_same_entry_whatever_the_batch_width():
    model = tiny_model(TuneSpec("freeze", 2)).eval()
    cache = ActivationCache("ns")
    alone, _ = lookup(cache, model, 2, [3])  # width 3
    together, misses = lookup(cache, model, 2, [3, 0])  # width 12
    assert misses == 1 and together.shape[1] == LENGTHS[0]
    n = LENGTHS[3]
    assert torch.equal(together[0, :n], alone[0]) and together[0, n:].abs().sum() == 0
    computed_together, _ = lookup(ActivationCache("ns"), model, 2, [3, 0])
    torch.testing.assert_close(computed_together, together, rtol=1e-5, atol=1e-5)


def test_fp16_storage_halves_memory():
    model = tiny_model(TuneSpec("freeze", 2)).eval()
    c32, c16 = ActivationCache("ns"), ActivationCache("ns", dtype=torch.float16)
    h32, _ = lookup(c32, model, 2, list(range(6)))
    h16, _ = lookup(c16, model, 2, list(range(6)))
    again, misses = lookup(c16, model, 2, list(range(6)))
    assert misses == 0 and again.dtype == torch.float32 and torch.equal(again, h16)
    torch.testing.assert_close(h16, h32, rtol=1e-2, atol=1e-3)
    assert 2 * c16.stats()["bytes_in_memory"] == c32.stats()["bytes_in_memory"]


@pytest.mark.parametrize("with_directory", [True, False])
def test_memory_budget(with_directory, tmp_path):
    model = tiny_model(TuneSpec("freeze", 2)).eval()
    budget = 25 * 32 * 4  # room for 25 of the 46 stored token rows
    cache = ActivationCache("ns", tmp_path if with_directory else None, budget)
    first, _ = lookup(cache, model, 2, list(range(6)))
    stats = cache.stats()
    assert 0 < stats["bytes_in_memory"] <= budget and stats["entries_in_memory"] < 6
    second, misses = lookup(cache, model, 2, list(range(6)))
    assert torch.equal(first, second)
    if with_directory:
        assert misses == 0 and stats["entries_on_disk"] == 6 and stats["bytes_on_disk"] > 0
    else:
        assert misses > 0 and cache.stats()["misses"] == 6 + misses
    assert cache.stats()["bytes_in_memory"] <= budget


def test_fresh_process_finds_entries_of_its_namespace_only(tmp_path):
    model = tiny_model(TuneSpec("freeze", 2)).eval()
    first, _ = lookup(ActivationCache("client-1", tmp_path), model, 2, [0, 1, 2, 3, 4, 5])
    again, misses = lookup(ActivationCache("client-1", tmp_path), model, 2, [5, 4, 3, 2, 1, 0])
    assert misses == 0 and torch.equal(again, first.flip(0))
    assert lookup(ActivationCache("client-2", tmp_path), model, 2, list(range(6)))[1] == 6
    assert lookup(ActivationCache("client-1", tmp_path), model, 2, list(range(6)))[1] == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
@pytest.mark.parametrize("fresh", [True, False])
def test_damaged_segment_is_a_miss(damage, fresh, tmp_path):
    model = tiny_model(TuneSpec("freeze", 2)).eval()
    cache = ActivationCache("ns", tmp_path, memory_budget_bytes=0)
    reference, _ = lookup(cache, model, 2, [0, 1, 2])
    lookup(cache, model, 2, [3, 4, 5])
    segment = sorted(tmp_path.glob("*/b2/*.pt"))[0]  # holds samples 0, 1, 2
    data = segment.read_bytes()
    new = {"truncate": data[: len(data) // 2], "garbage": b"not a tensor file", "empty": b""}
    segment.write_bytes(new[damage])
    if fresh:
        cache = ActivationCache("ns", tmp_path, memory_budget_bytes=0)
    hidden, misses = lookup(cache, model, 2, list(range(6)))
    assert misses == 3 and torch.equal(hidden[:3], reference)
    assert lookup(ActivationCache("ns", tmp_path), model, 2, list(range(6)))[1] == 0


def test_drop_boundaries_and_clear_free_disk(tmp_path):
    model = tiny_model(TuneSpec("freeze", 1)).eval()
    cache = ActivationCache("ns", tmp_path)
    other = ActivationCache("other", tmp_path)
    lookup(other, model, 3, list(range(6)))
    for b in (2, 3):
        lookup(cache, model, b, list(range(6)))
    both = cache.stats()
    assert both["boundaries"] == [2, 3] and both["entries_on_disk"] == 12
    cache.drop_boundaries_except({3})
    kept = cache.stats()
    assert kept["boundaries"] == [3] and 0 < kept["bytes_on_disk"] < both["bytes_on_disk"]
    assert kept["entries_in_memory"] == 6
    assert lookup(ActivationCache("ns", tmp_path), model, 2, list(range(6)))[1] == 6
    cache.clear()
    cleared = cache.stats()
    assert cleared["bytes_on_disk"] == 0 and cleared["bytes_in_memory"] == 0
    assert cleared["boundaries"] == [] and lookup(cache, model, 3, [0])[1] == 1
    assert lookup(ActivationCache("other", tmp_path), model, 3, list(range(6)))[1] == 0


def test_rejects_what_it_cannot_cache():
    model = tiny_model(TuneSpec("freeze", 2)).eval()
    with pytest.raises(ValueError, match="trainable"):
        lookup(ActivationCache("ns"), model, 3, [0])
    sid, ids, mask = samples()
    with pytest.raises(ValueError, match="right-padded"):
        ActivationCache("ns").hidden_for(model, 2, sid, ids, mask.flip(1))


@pytest.mark.parametrize("on_disk", [False, True])
def test_lookahead_stores_lower_boundaries_on_the_way(on_disk, tmp_path):
    """A fill at boundary 3 with lookahead 2 also keeps boundaries 2 and 1 (not 0: under the
    lowest boundary), exactly as a fill there would compute them; a later, deeper configuration
    then misses nothing."""
    model = tiny_model(TuneSpec("bottleneck", 1, 8)).eval()
    budget = 0 if on_disk else 2**20
    cache = ActivationCache(
        "ns", tmp_path if on_disk else None, budget, lookahead=2, lowest_boundary=1
    )
    assert lookup(cache, model, 3, [0, 1, 2, 3, 4, 5])[1] == 6
    assert cache.stats()["boundaries"] == [1, 2, 3]
    sid, ids, mask = samples()
    ids, mask = trim_batch(ids, mask)
    for b in (2, 1):
        hidden, misses = cache.hidden_for(model, b, sid, ids, mask, lookahead=())
        assert misses == 0, b
        torch.testing.assert_close(hidden, model.frozen_forward(ids, mask, b) * mask[..., None])
    assert lookup(cache, model, 0, [0])[1] == 1  # under the lowest boundary: never stored


def test_lookahead_is_not_rewritten_for_samples_already_held(tmp_path):
    model = tiny_model(TuneSpec("bottleneck", 1, 8)).eval()
    cache = ActivationCache("ns", tmp_path, lookahead=1)
    lookup(cache, model, 2, [0, 1])
    files = sorted(tmp_path.rglob("b2/*.pt"))
    assert len(files) == 1
    # samples 0 and 1 now miss at boundary 3; their boundary-2 entries are already held
    assert lookup(cache, model, 3, [0, 1, 2])[1] == 3
    assert sorted(tmp_path.rglob("b2/*.pt")) != files  # sample 2's entry only
    assert len(sorted(tmp_path.rglob("b2/*.pt"))) == 2
    new = (set(tmp_path.rglob("b2/*.pt")) - set(files)).pop()
    assert torch.load(new, weights_only=True)["ids"].tolist() == [2]


def test_frozen_states_equal_separate_frozen_passes():
    model = tiny_model(TuneSpec("bottleneck", 1, 8)).train()
    sid, ids, mask = samples()
    ids, mask = trim_batch(ids, mask)
    states = model.frozen_states(ids, mask, [3, 1, 2])
    assert sorted(states) == [1, 2, 3] and model.training
    for b, h in states.items():
        torch.testing.assert_close(h, model.frozen_forward(ids, mask, b), rtol=0, atol=0)
    with pytest.raises(ValueError, match="boundaries"):
        model.frozen_states(ids, mask, [NUM_LAYERS + 1])


@pytest.mark.parametrize(
    "strategy, depth, expected",
    [("fixed", 0, (0, 0)), ("autofed", 0, (2, 0)), ("autofed", 3, (2, 1))],
)
def test_only_growing_runs_keep_lower_boundaries(strategy, depth, expected, tmp_path):
    from autofednlp.client.worker import activation_cache
    from autofednlp.config import load_config

    cfg = load_config(
        None,
        [
            f'strategy.name="{strategy}"',
            f"strategy.max_depth={depth}",
            f'client.cache_dir="{tmp_path}"',
        ],
    )
    cache = activation_cache(cfg, "run", 0, tiny_model(TuneSpec("bottleneck", 1, 8)))
    assert (cache.lookahead, cache.lowest_boundary) == expected
