"""The experiment configuration's sections: frozen dataclasses, one per concern.

Every field carries its help text in `metadata["help"]` (the CLI's help is built from it);
values are checked once, in `__post_init__`, and a bad one raises `ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A user mistake in the configuration: the message is one line naming the field."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _check(cond: bool, name: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{name} = {value!r}: {why}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, name, value, f"must be one of {', '.join(allowed)}")


def _check_min(
    section: Any, prefix: str, minimum: float, *names: str, strict: bool = False
) -> None:
    """Each named field of `section` must be >= `minimum` (> with `strict`); `auto` passes
    (it is resolved, and the result checked, once the whole config is known)."""
    for name in names:
        v = getattr(section, name)
        if v == AUTO:
            continue
        ok = v > minimum if strict else v >= minimum
        _check(ok, f"{prefix}.{name}", v, f"must be {'>' if strict else '>='} {minimum}")


# a default that depends on other sections (the strategy): resolved by ExperimentConfig
AUTO = "auto"

PARTITIONERS = ("iid", "dirichlet", "shard")
TUNE_KINDS = ("full", "freeze", "bottleneck", "lora")
OPTIMIZERS = ("adamw", "sgd")
POOLINGS = ("mean", "cls")
ENGINES = ("simulation", "inprocess")
STRATEGIES = ("fixed", "autofed")
WINNER_RULES = ("best_accuracy", "gain_per_s")
BUDGETS = ("slowest", "paper")
CANDIDATE_POLICIES = ("upgrade", "upgrade-joint")
TRIAL_POLICIES = ("robust", "published")
TRIAL_PACES = ("keep", "place", "slowest", "background", "shadow")
SHADOW_BASES = ("own", "served")
SHADOW_TESTS = ("loss", "metric")
TRIAL_GATES = ("stall", "plateau")
TRIAL_JUDGES = ("shared", "groups")
AGGREGATIONS = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm")
PRIVACY_MODES = ("off", "central", "local")
TASKS = ("auto", "classification", "tagging")
OVERLONG = ("truncate", "refuse")
# CoNLL-style files (a token per line, its tag in the last column) are tagging data
CONLL_SUFFIXES = (".conll", ".iob", ".bio", ".txt")
TAGGING_DATASETS = ("twitter_ner",)
TARGET_METRICS = ("auto", "accuracy", "macro_f1", "f1")
# what `federation.target_metric = "auto"` means, and the metrics a task reports
DEFAULT_TARGET = {"classification": "accuracy", "tagging": "f1"}
TASK_METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "tagging": ("f1", "precision", "recall", "accuracy"),
}


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f(
        "bbc_news",
        "bundled name (bbc_news, twitter_ner), a local .csv/.json/.jsonl/.parquet file, a "
        "CoNLL-style .conll/.iob/.bio/.txt file (tagging), or a Hugging Face hub dataset id "
        "(e.g. ag_news, conll2003)",
    )
    task: str = _f(
        "auto",
        "classification (a label per text) or tagging (a tag per word, e.g. NER); auto = "
        "tagging for twitter_ner and CoNLL-style files, classification otherwise",
    )
    hub_subset: str = _f("", "hub dataset configuration name, if the dataset has several")
    text_column: str = _f("text", "column holding the text (local and hub datasets)")
    label_column: str = _f("label", "column holding the class label (local and hub datasets)")
    tokens_column: str = _f("tokens", "tagging: column holding each sentence's list of words")
    tags_column: str = _f(
        "ner_tags", "tagging: column holding each sentence's list of tags (names or ids)"
    )
    labels: list[str] = _f(
        [],
        'the label (tagging: tag) set, in order (ids follow it), e.g. ["neg", "pos"] or '
        '["O", "B-PER", "I-PER"]; a sample with a label outside it is an error. Empty = the '
        "labels found in the data",
    )
    max_length: int = _f(128, "tokens per sample after truncation")
    overlong: str = _f(
        "truncate",
        "tagging: what a sentence longer than max_length tokens gets: truncate (its words "
        "past the limit are cut, counted and reported) or refuse (the run stops before "
        "training, naming the sentence's file and line or row)",
    )
    max_samples: int = _f(0, "use only this many samples in all (seeded pick); 0 = all")
    validation_fraction: float = _f(0.1, "share held by the server for model selection")
    test_fraction: float = _f(0.1, "share held out and only reported at the end")
    resplit: bool = _f(
        False,
        "pool a source's own train/validation/test splits (hub datasets) and re-split them "
        "with the fractions above; false = use the source's splits where it has them",
    )
    num_clients: int = _f(100, "number of clients the training split is partitioned into")
    partitioner: str = _f("dirichlet", f"how training data is split: {', '.join(PARTITIONERS)}")
    alpha: float = _f(1.0, "Dirichlet concentration of the label skew (smaller = more skewed)")
    shards_per_client: int = _f(2, "label-sorted shards per client (partitioner = shard)")

    def __post_init__(self) -> None:
        _check(bool(self.dataset.strip()), "data.dataset", self.dataset, "must not be empty")
        _check(
            all(isinstance(v, str) and v.strip() for v in self.labels),
            "data.labels",
            self.labels,
            "must be non-empty strings",
        )
        _check(
            len(set(self.labels)) == len(self.labels), "data.labels", self.labels, "repeats a label"
        )
        _check(len(self.labels) != 1, "data.labels", self.labels, "needs at least 2 labels")
        _check_min(self, "data", 8, "max_length")
        _check_min(self, "data", 0, "max_samples")
        for name in ("validation_fraction", "test_fraction"):
            v = getattr(self, name)
            _check(0 < v < 0.5, f"data.{name}", v, "must be in (0, 0.5)")
        _check_min(self, "data", 1, "num_clients", "shards_per_client")
        _check_choice("data.partitioner", self.partitioner, PARTITIONERS)
        _check_min(self, "data", 0, "alpha", strict=True)
        _check_choice("data.task", self.task, TASKS)
        _check_choice("data.overlong", self.overlong, OVERLONG)

    @property
    def task_name(self) -> str:
        """The task, with `auto` resolved from the dataset's name (no data is read)."""
        if self.task != "auto":
            return self.task
        name = self.dataset.strip()
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if name in TAGGING_DATASETS or f".{suffix}" in CONLL_SUFFIXES:
            return "tagging"
        return "classification"


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f(
        "minilm",
        "pretrained encoder: 'minilm' (the packaged all-MiniLM-L6-v2), a local directory, "
        "or a hub model id",
    )
    pooling: str = _f("mean", f"sentence pooling for the classifier: {', '.join(POOLINGS)}")

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "model.name", self.name, "must not be empty")
        _check_choice("model.pooling", self.pooling, POOLINGS)


@dataclass(frozen=True)
class TuneConfig:
    kind: str = _f(
        "bottleneck",
        "what is trained: full (every weight), freeze (top `depth` layers), "
        "bottleneck (adapters in the top `depth` layers), lora (rank `width`)",
    )
    depth: int = _f(2, "number of top transformer layers that are trained (0 = head only)")
    width: int = _f(32, "adapter bottleneck dimension (bottleneck) or rank (lora)")
    lora_targets: list[str] = _f(
        [],
        "lora: names of the linear modules of a layer that LoRA adapts, e.g. "
        '["query", "key", "value"]; empty = the encoder family\'s default (BERT, RoBERTa, XLM-R, '
        "ELECTRA, ALBERT: query, value; DistilBERT: q_lin, v_lin; DeBERTa-v2/v3: query_proj, "
        "value_proj; ModernBERT: Wqkv)",
    )

    def __post_init__(self) -> None:
        _check_choice("tune.kind", self.kind, TUNE_KINDS)
        _check(
            all(isinstance(v, str) and v.strip() for v in self.lora_targets),
            "tune.lora_targets",
            self.lora_targets,
            "must be a list of module names",
        )
        _check_min(self, "tune", 0, "depth")
        _check_min(self, "tune", 1, "width")


@dataclass(frozen=True)
class ClientConfig:
    local_epochs: int = _f(1, "passes over the local data per round")
    batch_size: int = _f(4, "samples per local step (the paper uses 4)")
    optimizer: str = _f("adamw", f"local optimizer: {', '.join(OPTIMIZERS)}")
    learning_rate: float = _f(
        0.0,
        "local learning rate; 0 = the tune kind's default "
        "(full 1e-4, freeze 5e-4, adapters and LoRA 5e-3)",
    )
    weight_decay: float = _f(0.0, "decoupled weight decay (adamw) or L2 (sgd)")
    max_grad_norm: float = _f(1.0, "gradient clipping norm; 0 = off")
    activation_cache: bool = _f(
        True, "keep the frozen layers' outputs per sample and run only the trained layers after"
    )
    cache_memory_mb: float = _f(64.0, "activation cache memory per client before spilling to disk")
    cache_lookahead: int = _f(
        2,
        "autofed runs: a client filling its cache also keeps the hidden states entering this "
        "many layers below the boundary (computed on the way, so free in compute, at this many "
        "times more space), so that a deeper configuration after a growth or in a trial finds "
        "them cached; fixed runs never change boundary and keep none",
    )
    cache_fp16: bool = _f(False, "store cached activations in fp16 (half the space, not exact)")
    cache_dir: str = _f(
        "", "where clients spill their activation caches; empty = $AUTOFEDNLP_CACHE/activations"
    )

    def __post_init__(self) -> None:
        _check_min(self, "client", 1, "local_epochs", "batch_size")
        _check_min(self, "client", 0, "cache_lookahead")
        _check_choice("client.optimizer", self.optimizer, OPTIMIZERS)
        _check_min(
            self, "client", 0, "learning_rate", "weight_decay", "max_grad_norm", "cache_memory_mb"
        )


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = _f(20, "maximum federated rounds")
    time_budget_s: float = _f(
        0.0,
        "simulated seconds after which no new round starts (0 = no limit); the run ends at "
        "federation.rounds or here, whichever comes first. Compare methods at equal "
        "simulated time: a cheap configuration runs more rounds in it",
    )
    clients_per_round: int = _f(15, "clients sampled each round")
    eval_every: int = _f(1, "evaluate the global model on the validation split every N rounds")
    target_accuracy: float = _f(
        0.9,
        "value of the target metric (federation.target_metric) on the validation split that "
        "counts as 'reached' (the key keeps its name for every metric)",
    )
    target_metric: str = _f(
        "auto",
        "the metric time-to-target, the summary, progress lines, reports and AutoFedNLP's "
        "trials use: accuracy, macro_f1 (classification), f1 (entity-level, tagging); "
        "auto = f1 for tagging, accuracy for classification",
    )
    target_hold: int = _f(
        2,
        "evaluations in a row the served model must hold the target for it to count as "
        "reached (1 = the first reading; more keeps one lucky round from counting)",
    )
    served_ema: float | str = _f(
        AUTO,
        "the served model (what is evaluated on validation, counts for time to target, is "
        "tested and exported) is an exponential moving average, with this decay, of the "
        "current configuration's global weights after each round (Polyak averaging: it damps "
        "the round-to-round swing of a few sampled clients under label skew); clients always "
        "train from the latest global weights; it restarts when AutoFedNLP changes the "
        "configuration (after a shadow trial, from the winner's own average: a shadow judges "
        "each carried candidate on such an average of its weights too). 0 = the latest "
        "global weights; auto = 0.5 wherever the strategy can serve an average (fixed; "
        "AutoFedNLP with robust trials of pace shadow, or background without plateau_rounds), "
        "else 0 (the published rule and the trial-round paces serve a trial group's weights)",
    )
    stop_at_target: bool = _f(False, "end the run as soon as the target is reached (and held)")
    num_cpus_per_client: float = _f(1.0, "CPU cores one simulated client (Ray actor) takes")
    round_timeout_s: float = _f(0.0, "wall-clock seconds to wait for replies; 0 = no limit")
    checkpoint_every: int = _f(
        5,
        "write a checkpoint every N rounds (AutoFedNLP: at the end of each trial) and at the "
        "end; `run --resume DIR` continues from it. 0 = only at the end",
    )
    engine: str = _f(
        "simulation",
        "simulation (Flower's simulation engine) or inprocess (clients run one after another "
        "in this process, no engine: for debugging and quick sweeps)",
    )

    def __post_init__(self) -> None:
        _check_min(
            self, "federation", 1, "rounds", "clients_per_round", "eval_every", "target_hold"
        )
        _check_min(self, "federation", 0, "checkpoint_every", "round_timeout_s", "time_budget_s")
        _check(
            0 < self.target_accuracy <= 1,
            "federation.target_accuracy",
            self.target_accuracy,
            "must be in (0, 1]",
        )
        _check_min(self, "federation", 0, "num_cpus_per_client", strict=True)
        _check(
            self.served_ema == AUTO or 0 <= self.served_ema < 1,
            "federation.served_ema",
            self.served_ema,
            "must be in [0, 1) or auto",
        )
        _check_choice("federation.engine", self.engine, ENGINES)
        _check_choice("federation.target_metric", self.target_metric, TARGET_METRICS)


@dataclass(frozen=True)
class StrategyConfig:
    name: str = _f(
        "fixed",
        "fixed (train the [tune] configuration throughout) or autofed (start from the [tune] "
        "depth and width and upgrade them progressively, chosen by trial groups)",
    )
    trials: str = _f(
        "robust",
        "how trials run and decide: robust (the current configuration trains with every client "
        "until its validation accuracy stalls; then each sampled client trains one candidate, "
        "every candidate shares the current configuration's weights, which all clients "
        "update, and a candidate replaces it only if it is better on a paired test over the "
        "validation samples) or published (disjoint groups, equal time budgets, best single "
        "reading wins, as in the paper's code)",
    )
    patience: int = _f(
        3,
        "robust: evaluations without a gain of min_delta over the best served accuracy so far "
        "that count as a stall and start a trial",
    )
    min_delta: float = _f(0.005, "robust: the accuracy gain that counts as progress")
    trial_every: int = _f(
        0,
        "robust: rounds of the current configuration after which a trial runs even without a "
        "stall (while it still climbs, a candidate may climb faster per second); 0 = only on "
        "stalls",
    )
    trial_backoff: float = _f(
        2.0,
        "robust: after keep wins a trial, the waits for the next one (trial_every, patience) "
        "grow by this factor (up to 4x); after a candidate wins they shrink to 1/factor of "
        "the base; 1 = a fixed cadence",
    )
    trial_wait_time: bool = _f(
        True,
        "robust: count the wait for the next trial in simulated time too: it comes only once "
        "the time since the last trial ended is at least the time that trial took, scaled as "
        "the waits are (trial_backoff). Counted in rounds alone, trials take a growing share "
        "of the time as the current configuration's rounds get cheaper (a full activation "
        "cache), since a deeper candidate's round still computes",
    )
    confidence_z: float = _f(
        1.64,
        "robust: a candidate wins only if its mean per-sample validation loss is lower than the "
        "current configuration's by more than this many standard errors (1.64: one-sided 95%)",
    )
    trial_pace: str = _f(
        "shadow",
        "robust: how a trial's clients are paced. background: no trial round at all; a few "
        "probe clients (trial_probes) train keep and every candidate from the same weights (a "
        "paired comparison on the same clients' data, a candidate paying for its extra round "
        "time at the served model's recent loss rate), while the rest of each round's clients "
        "train the served model at its own pace; a probe round counts once its probes could "
        "have finished (trial_judge does not apply). shadow: as background, but the probes "
        "carry each candidate from its own weights for up to shadow_rounds probe rounds, and "
        "after each it is compared with the served model as it stands at that moment (no price "
        "for its slower rounds: both had the same clock); it wins once better by confidence_z "
        "standard errors, from its second round on; the first shadow trial starts after the "
        "first served round (later ones follow the stall schedule). The others run trial "
        "rounds, which last as long as their slowest client: keep (clients dealt out in turn; a"
        " candidate's client trains at most the local steps that fit in the time the slowest "
        "client of keep's group takes, estimated from data sizes and devices in past replies, "
        "cache fills and FLOPs), place (clients placed by that estimate, the largest on the "
        "cheapest configuration, with full local epochs) or slowest (dealt out in turn, full "
        "local epochs: the round waits for the slowest)",
    )
    shadow_rounds: int = _f(
        12,
        "robust, trial_pace = shadow: the most probe rounds a candidate trains beside the "
        "served model before keep wins the trial",
    )
    shadow_base: str = _f(
        "served",
        "robust, trial_pace = shadow: what a candidate is after each probe round, judged "
        "as and trained on from. own: the weights the probes left. served: those, or its added "
        "tensors (adapters of the new layers, added width) laid over the served model's weights"
        " as they stand at that moment (trained meanwhile with more clients), whichever has the"
        " lower validation loss",
    )
    shadow_test: str = _f(
        "loss",
        "robust, trial_pace = shadow: what each look pairs over the validation samples. loss: "
        "the per-sample validation loss (a more confident model at equal accuracy wins too). "
        "metric: the per-sample error on the target metric's terms (a wrong class; a tagged "
        "sentence's share of tokens tagged wrong), so a candidate wins only by getting more "
        "samples right",
    )
    shadow_control: bool = _f(
        True,
        "robust, trial_pace = shadow: the probes also train the current configuration (a "
        "control, from the served weights at the trial's start, continued like a candidate), "
        "and a candidate wins only if clearly better than the served model and than the "
        "control on the same looks. The served model trains with the clients the trial leaves "
        "it, and under label skew their draw can set it back: the control, trained on the same"
        " probes as the candidates, tells a candidate's capacity from the probes' draw",
    )
    shadow_warm_gate: bool = _f(
        True,
        "robust, trial_pace = shadow: a candidate is not adopted while the served "
        "configuration's next round is expected to cost less than a third (1 / WARM_FACTOR) "
        "of its last: the chance that a draw finds every client's cache filled, times the "
        "server's estimate of its round then, plus a round like the last otherwise. Its "
        "progress per second so far then understates what it is about to gain",
    )
    trial_gate: str = _f(
        "stall",
        "robust: when a trial that waits for a stall may start. stall: once the stall detector "
        "(patience, min_delta) and the schedule (trial_backoff, trial_wait_time) say so. "
        "plateau: also only once the configuration served now has stopped improving on its "
        "own readings: its served validation loss over its last 2 x patience readings (none "
        "of an earlier configuration's) falls by no more than confidence_z standard errors of "
        "the least-squares slope. A trial lends clients; a record set by the configuration "
        "before a growth, or one noisy reading, must not start one while the new "
        "configuration still climbs. (The shadow's first trial, at the run's start, is not "
        "gated.)",
    )
    probes_serve: bool | str = _f(
        AUTO,
        "robust, trial_pace = background or shadow: each probe round's probes are picked among"
        " a served round's clients and train that round like the others first, then their "
        "trial tasks, whose results count once the probes could have finished those too. Every"
        " served round trains the clients a fixed configuration with the same seed draws for "
        "it, less the probes still at work. Off: the served model lends the probes (trains with"
        " clients_per_round - trial_probes others while they work on the trial); auto = on "
        "with robust trials of pace shadow, else off",
    )
    trial_probes: int = _f(
        0,
        "robust, trial_pace = background or shadow: clients per probe round, taken from "
        "clients_per_round (the served model trains with the rest); 0 = a third of it",
    )
    plateau_rounds: int = _f(
        0,
        "robust, trial_pace = background: a trial that starts while the served model's "
        "validation loss no longer falls (its least-squares slope over the last 2 x patience "
        "readings within confidence_z standard errors of 0, or, once such a plateau was seen, "
        "the mean of those readings not below the plateau's by confidence_z standard errors) "
        "has every client of its rounds train the served model's round and every candidate, "
        "paired, for up to this many rounds, each round as long as its tasks together: at a "
        "plateau the served model gains nothing from a round's pace, and new capacity, which "
        "starts at zero, needs the clients and the rounds a fixed run would to show a gain; "
        "no per-second price, no futility stop before its second look and no wait in "
        "simulated time after it (trial_wait_time); each plateau trial in a row that keep won "
        "adds a depth_step to the next deeper candidate (as escalate does after any trial); "
        "0 = off (every trial as any other)",
    )
    trial_judge: str = _f(
        "groups",
        "robust: what a trial compares. shared: each candidate as its own added tensors on the "
        "trunk averaged over every group's clients, against keep (the served model). groups: "
        "each candidate as its own group's average, against keep's group's own average, the "
        "same number of clients each; a deeper candidate's upper layers then stay the ones "
        "that trained beside its new layer. Either way keep is served with the shared trunk",
    )
    early_decision: bool = _f(
        True,
        "robust: after each of a trial's rounds but the last, end it at once if a candidate is "
        "already better than keep by twice confidence_z standard errors, from its second "
        "round on (one round's reading can clear the bar by chance; new capacity starts at "
        "zero, so an early reading is otherwise biased against the candidate); with "
        "trial_pace background also when every candidate is already worse by that bar",
    )
    candidates: str = _f(
        "upgrade",
        "candidate policy of a trial: upgrade (keep, deeper, wider), upgrade-joint "
        "(keep, deeper, wider, deeper+wider)",
    )
    winner: str = _f(
        "best_accuracy",
        "published trials: how the winner is chosen on the validation split: best_accuracy "
        "(best reached within the budget) or gain_per_s (accuracy gained per simulated second)",
    )
    escalate: bool = _f(
        False,
        "robust: after each trial in a row that keep won, the next deeper candidate adds one "
        "more depth_step (up to max_depth): a layer that shows no gain alone at a plateau may "
        "show one together with the layer above it",
    )
    depth_step: int | str = _f(
        AUTO,
        "layers a 'deeper' candidate adds; auto = 2 with robust trials of pace shadow (a "
        "shadow carries a candidate for several rounds, and two new layers show a gain a "
        "single one often does not), else 1",
    )
    width_step: int = _f(8, "bottleneck dims a 'wider' candidate adds")
    max_depth: int = _f(0, "cap on depth; 0 = the model's number of layers")
    max_width: int = _f(64, "cap on width")
    budget: str = _f(
        "slowest",
        "published trials' time budget: slowest (trial_rounds rounds of the slowest candidate, "
        "measured on the cost model) or paper (trial_base_s x (4 x depth + 1), as the "
        "published code)",
    )
    trial_rounds: int = _f(
        2,
        "rounds of a trial: robust, all groups in step (the later half decides); published "
        "with budget = slowest, the rounds the slowest candidate gets",
    )
    trial_base_s: float = _f(60.0, "base of the paper's budget, simulated seconds")
    max_group_rounds: int = _f(
        8, "published trials: cap on the rounds one group runs in a trial (bounds wall time)"
    )

    def __post_init__(self) -> None:
        for name, allowed in (
            ("name", STRATEGIES),
            ("trials", TRIAL_POLICIES),
            ("winner", WINNER_RULES),
            ("budget", BUDGETS),
            ("candidates", CANDIDATE_POLICIES),
            ("trial_pace", TRIAL_PACES),
            ("trial_judge", TRIAL_JUDGES),
            ("shadow_base", SHADOW_BASES),
            ("shadow_test", SHADOW_TESTS),
            ("trial_gate", TRIAL_GATES),
        ):
            _check_choice(f"strategy.{name}", getattr(self, name), allowed)
        steps = (
            "depth_step",
            "width_step",
            "trial_rounds",
            "shadow_rounds",
            "max_group_rounds",
            "max_width",
        )
        _check_min(self, "strategy", 1, *steps)
        counts = (
            "max_depth",
            "min_delta",
            "confidence_z",
            "trial_every",
            "trial_probes",
            "plateau_rounds",
        )
        _check_min(self, "strategy", 0, *counts)
        _check_min(self, "strategy", 1, "patience")
        _check_min(self, "strategy", 0, "trial_base_s", strict=True)
        _check_min(self, "strategy", 1, "trial_backoff")


@dataclass(frozen=True)
class AggregationConfig:
    """How each group's client updates become its new weights (names as Flower's strategies)."""

    name: str = _f(
        "fedprox",
        "fedprox (default: fedavg plus a proximal term in local training, which holds clients "
        "near the received weights under label skew), fedavg (example-weighted average), "
        "fedadam / fedyogi (Flower's adaptive server optimizers on the averaged update), "
        "fedavgm (Flower's server momentum); server optimizer state is kept per configuration "
        "and checkpointed",
    )
    proximal_mu: float = _f(
        0.01, "fedprox: weight of the proximal term mu/2 ||w - w_received||^2 (0 = fedavg)"
    )
    eta: float = _f(0.01, "fedadam / fedyogi: server learning rate")
    beta_1: float = _f(0.9, "fedadam / fedyogi: first moment decay")
    beta_2: float = _f(0.99, "fedadam / fedyogi: second moment decay")
    tau: float = _f(1e-3, "fedadam / fedyogi: adaptivity (added to the root of the 2nd moment)")
    server_learning_rate: float = _f(1.0, "fedavgm: server learning rate")
    server_momentum: float = _f(0.9, "fedavgm: server momentum")

    def __post_init__(self) -> None:
        _check_choice("aggregation.name", self.name, AGGREGATIONS)
        _check_min(self, "aggregation", 0, "proximal_mu", "server_momentum", "beta_1", "beta_2")
        _check_min(self, "aggregation", 0, "eta", "tau", "server_learning_rate", strict=True)
        for name in ("beta_1", "beta_2", "server_momentum"):
            v = getattr(self, name)
            _check(v < 1, f"aggregation.{name}", v, "must be < 1")


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy (DP-FedAvg, McMahan et al., 2018)."""

    mode: str = _f(
        "off",
        "off; central (each client's update, its change to the weights it received, is "
        "clipped to clip_norm, the server averages them with equal weights and adds Gaussian "
        "noise of std noise_multiplier x clip_norm to their sum: Flower's "
        "DifferentialPrivacyServerSideFixedClipping); local (each client clips its update and "
        "adds that noise itself before sending it)",
    )
    clip_norm: float = _f(1.0, "L2 bound of one client's update, over all its trained tensors")
    noise_multiplier: float = _f(
        1.0, "noise std / clip_norm (0 = clipping only; epsilon is then infinite)"
    )
    delta: float = _f(
        1e-5,
        "the delta at which epsilon is reported (Opacus's RDP accountant; central DP is "
        "accounted as Poisson sampling of clients/num_clients, an approximation of the fixed "
        "number the server draws: see privacy/accountant.py)",
    )

    def __post_init__(self) -> None:
        _check_choice("privacy.mode", self.mode, PRIVACY_MODES)
        _check_min(self, "privacy", 0, "clip_norm", strict=True)
        _check_min(self, "privacy", 0, "noise_multiplier")
        _check(0 < self.delta < 1, "privacy.delta", self.delta, "must be in (0, 1)")


@dataclass(frozen=True)
class CostConfig:
    devices: dict[str, float] = _f(
        {"jetson-tx2": 1.0},
        "device mix: profile name -> share of clients (e.g. {jetson-tx2 = 0.5, jetson-nano = 0.3, "
        "rpi4 = 0.2}); see `autofednlp devices`",
    )
    upload_mb_per_s: float = _f(1.0, "client upload bandwidth in MB/s (paper: 1 MB/s)")
    download_mb_per_s: float = _f(1.0, "client download bandwidth in MB/s (paper: 1 MB/s)")
    compute_watts: float = _f(12.0, "device power while computing (paper: 12 W)")
    transmit_watts: float = _f(4.0, "device power while transmitting (paper: 4 W)")

    def __post_init__(self) -> None:
        _check(len(self.devices) > 0, "cost.devices", self.devices, "must name at least one")
        for name, share in self.devices.items():
            _check(
                isinstance(share, int | float) and share > 0,
                f"cost.devices.{name}",
                share,
                "share must be a number > 0",
            )
        _check_min(self, "cost", 0, "upload_mb_per_s", "download_mb_per_s", strict=True)
        _check_min(self, "cost", 0, "compute_watts", "transmit_watts")


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class RuntimeConfig:
    """The hardware that runs the simulation (not the simulated devices: see [cost]); it
    changes wall time only, never simulated time, traffic or energy."""

    device: str = _f(
        "auto",
        "torch device for training and evaluation: auto (CUDA if this machine has it, else "
        "CPU; on a deployment, each SuperNode's own), cpu, cuda or cuda:N",
    )
    precision: str = _f(
        "fp32",
        "fp32 (exact, as without a GPU), or bf16 / fp16 autocast for the forward passes of "
        "training and evaluation (faster on GPUs; weights stay fp32; fp16 uses loss scaling)",
    )
    gpus_per_client: float = _f(
        0.25,
        "share of a GPU one client actor of Flower's simulation engine takes when CUDA is "
        "used (0.25: four actors per GPU); lower it to run more clients at once",
    )

    def __post_init__(self) -> None:
        d = self.device.strip().lower()
        ok = d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())
        _check(ok, "runtime.device", self.device, "must be auto, cpu, cuda or cuda:N")
        _check_choice("runtime.precision", self.precision, PRECISIONS)
        _check_min(self, "runtime", 0, "gpus_per_client", strict=True)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = _f("default", "experiment name, used for the run directory")
    seed: int = _f(0, "fixes partitions, client sampling, device assignment and initialisation")
    output_dir: str = _f("runs", "parent directory of run directories")
    tensorboard: bool = _f(
        False,
        "also write TensorBoard event files to <run dir>/tensorboard "
        "(view: tensorboard --logdir runs/)",
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @property
    def _shadow(self) -> bool:
        st = self.strategy
        return st.name == "autofed" and st.trials == "robust" and st.trial_pace == "shadow"

    @property
    def _lends_probes(self) -> bool:
        """Robust trials of a pace with probe clients (background, shadow)."""
        st = self.strategy
        return st.trials == "robust" and st.trial_pace in ("background", "shadow")

    @property
    def _averages(self) -> bool:
        """Whether the strategy can serve a moving average: fixed runs, and robust trials with
        probe clients but no plateau trials (the others serve a trial group's weights)."""
        st = self.strategy
        plateau = st.plateau_rounds and st.trial_pace != "shadow"
        return st.name != "autofed" or (self._lends_probes and not plateau)

    @property
    def served_ema(self) -> float:
        """`federation.served_ema` with `auto` resolved for the strategy: 0.5 wherever it can
        serve an average (fixed runs; robust trials of pace shadow, or background without
        plateau_rounds), else 0 (the published rule and the trial-round paces serve a trial
        group's weights). Resolved where it is read, never stored: a config rebuilt with
        another strategy (overrides on a run's config, `dataclasses.replace`) resolves it for
        that strategy."""
        v = self.federation.served_ema
        if v != AUTO:
            return v
        return 0.5 if self._averages else 0.0

    @property
    def probes_serve(self) -> bool:
        """`strategy.probes_serve` with `auto` resolved: on with robust trials of pace shadow."""
        v = self.strategy.probes_serve
        return self._shadow if v == AUTO else v

    @property
    def depth_step(self) -> int:
        """`strategy.depth_step` with `auto` resolved: 2 with robust trials of pace shadow (a
        shadow carries a candidate for several rounds), else 1."""
        v = self.strategy.depth_step
        return (2 if self._shadow else 1) if v == AUTO else v

    def auto_resolved(self) -> dict[str, Any]:
        """The fields left at `auto` that this run uses, by dotted name, with what they
        resolve to (the summary records them beside config.toml, which keeps `auto`)."""
        fields = {"federation.served_ema": (self.federation.served_ema, self.served_ema)}
        if self.strategy.name == "autofed":  # a fixed run has no trials
            fields["strategy.probes_serve"] = (self.strategy.probes_serve, self.probes_serve)
            fields["strategy.depth_step"] = (self.strategy.depth_step, self.depth_step)
        return {name: value for name, (raw, value) in fields.items() if raw == AUTO}

    def resolved(self) -> ExperimentConfig:
        """This config with its `auto` fields set to what they resolve to (the same run: for
        comparing a config that says `auto` with one that spells the values out)."""
        fed = dataclasses.replace(self.federation, served_ema=self.served_ema)
        st = dataclasses.replace(
            self.strategy, probes_serve=self.probes_serve, depth_step=self.depth_step
        )
        return dataclasses.replace(self, federation=fed, strategy=st)

    @property
    def target_metric(self) -> str:
        """`federation.target_metric` with `auto` resolved for the task."""
        m = self.federation.target_metric
        return DEFAULT_TARGET[self.data.task_name] if m == "auto" else m

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "name", self.name, "must not be empty")
        _check(
            self.federation.clients_per_round <= self.data.num_clients,
            "federation.clients_per_round",
            self.federation.clients_per_round,
            f"must be <= data.num_clients ({self.data.num_clients})",
        )
        task = self.data.task_name
        allowed = [m for m in TARGET_METRICS if m == "auto" or m in TASK_METRICS[task]]
        _check(
            self.federation.target_metric in allowed,
            "federation.target_metric",
            self.federation.target_metric,
            f"not a metric of {task} (use {', '.join(allowed)})",
        )
        if self.strategy.name == "autofed":
            _check(
                self.tune.kind in ("bottleneck", "lora"),
                "tune.kind",
                self.tune.kind,
                "strategy autofed grows adapters: use bottleneck or lora",
            )
            _check(
                self.tune.width % self.strategy.width_step == 0,
                "tune.width",
                self.tune.width,
                f"must be a multiple of strategy.width_step ({self.strategy.width_step})",
            )
            _check(
                self.tune.width <= self.strategy.max_width,
                "tune.width",
                self.tune.width,
                f"must be <= strategy.max_width ({self.strategy.max_width})",
            )
            if self.served_ema > 0:
                _check(
                    self._averages,
                    "federation.served_ema",
                    self.served_ema,
                    "AutoFedNLP serves a moving average only with strategy.trials = robust, "
                    "trial_pace background (plateau_rounds = 0) or shadow (the others serve a "
                    "trial group's weights; auto chooses for the strategy)",
                )
            if self.probes_serve:
                _check(
                    self._lends_probes,
                    "strategy.probes_serve",
                    True,
                    "needs strategy.trials = robust with trial_pace background or shadow (the "
                    "paces with probe clients; auto chooses for the strategy)",
                )
            _check(
                not (self.strategy.plateau_rounds and self._shadow),
                "strategy.plateau_rounds",
                self.strategy.plateau_rounds,
                'the shadow pace has no plateau trials: use strategy.trial_pace = "background"',
            )
            if self._lends_probes:
                per_round = self.federation.clients_per_round
                _check(
                    per_round >= 2,
                    "federation.clients_per_round",
                    per_round,
                    "trial_pace background or shadow lends probe clients from each round: "
                    "use 2 or more",
                )
                _check(
                    self.strategy.trial_probes < per_round,
                    "strategy.trial_probes",
                    self.strategy.trial_probes,
                    f"must be < federation.clients_per_round ({per_round}): the served model "
                    "needs a client",
                )
