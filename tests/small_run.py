"""The small federated run most tests use: a tiny model, 120 samples over 6 clients, in-process.

Tests add their own overrides after these (a later override of the same key wins).
"""

from autofednlp.config import ExperimentConfig, load_config


def small_overrides(tiny_model_dir: str, *extra: str) -> list[str]:
    return [
        f'model.name="{tiny_model_dir}"',
        "data.max_samples=120",
        "data.max_length=32",
        "data.num_clients=6",
        "federation.clients_per_round=3",
        "federation.rounds=2",
        "federation.engine=inprocess",
        *extra,
    ]


def small_config(tiny_model_dir: str, tmp_path, *extra: str) -> ExperimentConfig:
    return load_config(None, small_overrides(tiny_model_dir, f'output_dir="{tmp_path}"', *extra))
