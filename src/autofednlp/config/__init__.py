"""One typed experiment configuration, read from TOML plus `section.key=value` overrides.

`sections.py` holds the dataclasses and their checks; `loading.py` reads files and overrides.
"""

from autofednlp.config.loading import (
    SECTIONS,
    apply_overrides,
    describe_fields,
    from_dict,
    load_config,
    to_dict,
    to_toml,
)
from autofednlp.config.sections import (
    PARTITIONERS,
    TUNE_KINDS,
    AggregationConfig,
    ClientConfig,
    ConfigError,
    CostConfig,
    DataConfig,
    ExperimentConfig,
    FederationConfig,
    ModelConfig,
    PrivacyConfig,
    RuntimeConfig,
    StrategyConfig,
    TuneConfig,
)

__all__ = [
    "PARTITIONERS",
    "SECTIONS",
    "TUNE_KINDS",
    "AggregationConfig",
    "ClientConfig",
    "ConfigError",
    "CostConfig",
    "DataConfig",
    "ExperimentConfig",
    "FederationConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RuntimeConfig",
    "StrategyConfig",
    "TuneConfig",
    "apply_overrides",
    "describe_fields",
    "from_dict",
    "load_config",
    "to_dict",
    "to_toml",
]
