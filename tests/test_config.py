"""The experiment config: parsing, overrides, one-line errors, and every shipped file."""

import tomllib
from pathlib import Path

import pytest

from autofednlp.config import (
    ConfigError,
    ExperimentConfig,
    describe_fields,
    from_dict,
    load_config,
    to_toml,
)

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_defaults_are_the_bundled_experiment():
    cfg = load_config()
    assert cfg.data.dataset == "bbc_news" and cfg.data.num_clients == 100
    assert cfg.model.name == "minilm" and cfg.tune.kind == "bottleneck"
    assert cfg.federation.clients_per_round == 15 and cfg.data.max_length == 128


def test_default_toml_spells_out_every_key_with_its_default():
    path = Path(__file__).parent.parent / "configs" / "default.toml"
    table = tomllib.loads(path.read_text(encoding="utf-8"))
    spelled = {
        f"{k}.{kk}" if isinstance(v, dict) else k: vv
        for k, v in table.items()
        for kk, vv in (v.items() if isinstance(v, dict) else [(k, v)])
    }
    assert set(spelled) == {name for name, _, _ in describe_fields()}
    assert load_config(path) == load_config()


def test_overrides_take_toml_values():
    cfg = load_config(
        None,
        [
            "federation.rounds=3",
            "data.alpha=0.5",
            "tune.kind=freeze",
            'name="my run"',
            "cost.devices={jetson-tx2 = 0.5, rpi4 = 0.5}",
            "federation.stop_at_target=true",
        ],
    )
    assert cfg.federation.rounds == 3 and cfg.data.alpha == 0.5 and cfg.tune.kind == "freeze"
    assert cfg.name == "my run" and cfg.cost.devices == {"jetson-tx2": 0.5, "rpi4": 0.5}
    assert cfg.federation.stop_at_target is True


def test_file_then_overrides(tmp_path):
    f = tmp_path / "e.toml"
    f.write_text("seed = 3\n[federation]\nrounds = 7\nclients_per_round = 5\n")
    cfg = load_config(f, ["federation.rounds=9"])
    assert (cfg.seed, cfg.federation.rounds, cfg.federation.clients_per_round) == (3, 9, 5)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("federation.rounds=-1", "federation.rounds = -1: must be >= 1"),
        ("federation.rounds=abc", "federation.rounds = 'abc': expected an integer"),
        ("federation.rounds=2.5", "federation.rounds = 2.5: expected an integer"),
        ("data.alpha=0", "data.alpha = 0.0: must be > 0"),
        ("data.partitioner=zipf", "data.partitioner = 'zipf': must be one of"),
        ("data.colour=1", "unknown key 'data.colour'"),
        ("colour=1", "unknown key 'colour'"),
        ("tune.kind=prefix", "tune.kind = 'prefix'"),
        ("tune.depth=-2", "tune.depth = -2"),
        ("federation.clients_per_round=500", "must be <= data.num_clients (100)"),
        ("cost.devices={tx2 = -1}", "cost.devices.tx2"),
        ("cost.upload_mb_per_s=0", "cost.upload_mb_per_s = 0.0: must be > 0"),
        ("federation.target_accuracy=1.5", "federation.target_accuracy"),
        ("data=3", "data must be a table"),
        ("rounds", "expected key=value"),
        ("data.num_clients=0", "data.num_clients = 0"),
        ('data.labels=["a"]', "data.labels = ['a']: needs at least 2"),
        ('data.labels=["a", "b", "a"]', "repeats a label"),
        ('data.labels=["a", ""]', "data.labels = ['a', '']: must be non-empty"),
        ("data.labels=[1, 2]", "data.labels[0] = 1: expected a string"),
        ('data.labels="a,b"', "data.labels = 'a,b': expected a list"),
        ("federation.served_ema=often", "served_ema = 'often': expected a number or \"auto\""),
        ("federation.served_ema=1", "federation.served_ema = 1.0: must be in [0, 1) or auto"),
        ("strategy.depth_step=0", "strategy.depth_step = 0: must be >= 1"),
        ("strategy.probes_serve=2", 'probes_serve = 2: expected true or false or "auto"'),
    ],
)
def test_bad_values_give_one_line_naming_the_field(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\nrounds = 1")
    with pytest.raises(ConfigError, match="bad.toml.*not valid TOML"):
        load_config(bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "caf\xe9"'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)


def test_round_trip_through_toml():
    import tomllib

    cfg = load_config(None, ["cost.devices={jetson-nano = 1}", "seed=5"])
    assert from_dict(tomllib.loads(to_toml(cfg))) == cfg


AUTOFED = ["strategy.name=autofed"]


@pytest.mark.parametrize(
    "overrides, served_ema, probes_serve, depth_step",
    [
        ([], 0.5, False, 1),  # a fixed run serves the average too
        (AUTOFED, 0.5, True, 2),  # the default policy: shadow trials
        ([*AUTOFED, 'strategy.trial_pace="background"'], 0.5, False, 1),
        ([*AUTOFED, 'strategy.trial_pace="background"', "strategy.plateau_rounds=2"], 0, False, 1),
        ([*AUTOFED, 'strategy.trial_pace="keep"'], 0, False, 1),
        ([*AUTOFED, 'strategy.trials="published"'], 0, False, 1),
        ([*AUTOFED, "federation.served_ema=0.3", "strategy.depth_step=3"], 0.3, True, 3),
        ([*AUTOFED, 'strategy.trials="published"', "strategy.depth_step=2"], 0, False, 2),
    ],
)
def test_auto_defaults_resolve_for_the_strategy_and_explicit_values_stay(
    overrides, served_ema, probes_serve, depth_step
):
    cfg = load_config(None, overrides)
    assert (cfg.served_ema, cfg.probes_serve, cfg.depth_step) == (
        served_ema,
        probes_serve,
        depth_step,
    )
    # config.toml keeps what was said; the summary records what `auto` became
    assert from_dict(tomllib.loads(to_toml(cfg))) == cfg
    said = {o.split("=")[0] for o in overrides}
    auto = {"federation.served_ema", "strategy.probes_serve", "strategy.depth_step"} - said
    if not overrides:  # a fixed run: its summary lists only what it uses
        auto = {"federation.served_ema"}
    assert set(cfg.auto_resolved()) == auto
    again = cfg.resolved()  # the same run, spelled out
    assert again.auto_resolved() == {}
    assert (again.served_ema, again.probes_serve, again.depth_step) == (
        served_ema,
        probes_serve,
        depth_step,
    )


def test_auto_follows_a_strategy_changed_after_loading(tmp_path):
    """A run's config.toml reused with another strategy, a config object with overrides, or
    dataclasses.replace: `auto` resolves for the strategy it ends up with."""
    import dataclasses

    from autofednlp.api import _config

    shadow = load_config(None, AUTOFED)
    keep = _config(shadow, ['strategy.trial_pace="keep"'])
    assert (keep.served_ema, keep.probes_serve, keep.depth_step) == (0.0, False, 1)
    path = tmp_path / "config.toml"
    path.write_text(to_toml(shadow))
    bg = load_config(path, ['strategy.trial_pace="background"'])
    assert (bg.served_ema, bg.probes_serve, bg.depth_step) == (0.5, False, 1)
    published = dataclasses.replace(
        shadow, strategy=dataclasses.replace(shadow.strategy, trials="published")
    )
    assert (published.served_ema, published.probes_serve) == (0.0, False)


def test_a_setting_the_pace_cannot_take_is_refused_only_when_set():
    keep = [*AUTOFED, 'strategy.trial_pace="keep"']
    assert load_config(None, keep).probes_serve is False
    with pytest.raises(ConfigError, match="strategy.probes_serve = True: needs"):
        load_config(None, [*keep, "strategy.probes_serve=true"])
    with pytest.raises(ConfigError, match="federation.served_ema = 0.5: AutoFedNLP serves"):
        load_config(None, [*keep, "federation.served_ema=0.5"])
    with pytest.raises(ConfigError, match="strategy.plateau_rounds = 2: the shadow pace has no"):
        load_config(None, [*AUTOFED, "strategy.plateau_rounds=2"])


def test_every_field_is_documented():
    for name, _default, help_text in describe_fields():
        assert help_text, f"{name} has no help text"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_parse(path):
    assert isinstance(load_config(path), ExperimentConfig)


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 2


def test_autofed_width_must_be_a_multiple_of_the_step():
    with pytest.raises(
        ConfigError, match="tune.width = 12: must be a multiple of strategy.width_step"
    ):
        load_config(None, ["strategy.name=autofed", "tune.width=12"])
