"""AutoFedNLP: fast federated fine-tuning of pretrained transformers.

The notebook API (see README, "From Python"):

    from autofednlp import load_config, run_experiment
    result = run_experiment(load_config("configs/default.toml"), progress="quiet")
    result.rounds  # a pandas DataFrame, one row per round
"""

from typing import Any

__version__ = "0.1.0"

_API = ("ConfigError", "RunResult", "load_config", "load_results", "resume_experiment")
_API += ("run_experiment",)


def __getattr__(name: str) -> Any:
    # imported on first use: `import autofednlp` (every command's start) stays light
    if name in _API:
        from autofednlp import api

        return getattr(api, name)
    raise AttributeError(f"module 'autofednlp' has no attribute {name!r}")


__all__ = [*_API, "__version__"]
