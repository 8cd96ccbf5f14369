"""Training with control tokens: stages, mixtures, checkpoint/resume, data parallel.

The loop is plain next-token prediction on packed conditioned rows (rcond.corpus), with the
loss of DESIGN §6 computed from the decoder's last hidden state and the output weight by
``rcond.loss.packed_conditional_loss`` (the [tokens x vocab] logits are never built).

- **Stages and mixtures.** A run is a list of stages, each with corpora, mixture weights and a
  number of optimizer steps (the staged-training recipe: property 1 first, then property 2 with
  property 1 kept in the mix). Every row of a step is drawn from corpus c with probability
  w_c / sum(w); each corpus is read in a seeded random order, reshuffled every epoch.
- **Normalisation.** A step's loss is sum_i w_i * nll_i / sum_i w_i over every row of the step
  on every rank (the global token count), not a mean of micro-batch means: micro-batch m on
  rank r back-propagates loss_sum(m) / W_global, and the rank gradients are summed.
- **Optimizer.** AdamW (no decay on norms and biases), linear warmup then cosine decay to
  ``min_lr_ratio * lr`` over all stages' steps, gradient clipping by global norm.
- **Data parallel.** Under ``torchrun`` every rank draws the same global list of rows for a step
  and takes micro-batches r, r+W, ...; after the last micro-batch the gradients are all-reduced
  (summed) in flattened buckets. (Plain DDP is not used: the fused loss reads the output weight
  outside the module's forward, which DDP would not synchronise for an untied LM head.)
- **Checkpoints.** ``OUT/checkpoint`` holds ``save_pretrained`` weights plus optimizer,
  scheduler, RNG and data-position state, written atomically; ``--resume`` continues so that,
  on CPU, the loss curve equals an uninterrupted run's. Ctrl-C / SIGTERM finish the current
  step, save a checkpoint and exit. The final model goes to ``OUT/model``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
import tomllib
from dataclasses import InitVar, asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .atomic import creating, file_in_the_way, interrupt_recorded, recording_interrupts
from .loss import IMPLS as LOSS_IMPLS, packed_conditional_loss
from .modeling import PRESETS, build_model, load_spec_tokenizer, output_head, packed_hidden, save_pretrained_atomic
from .tokenizer import tokenizer_fingerprint
from .tokens import SCHEME_FILE, ControlScheme, SchemeError

STATE_FILE = "training_state.pt"
CHECKPOINT_DIR = "checkpoint"
MODEL_DIR = "model"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "train_config.json"
CONFIG_STAGED = f".{CONFIG_FILE}.tmp"  # written whole, then renamed to CONFIG_FILE


class TrainError(ValueError):
    """A training run cannot start or continue; the message says which setting to change."""


# ---------------------------------------------------------------------------- configuration
COMMAND_LINE = "command line"  # ``Stage(where=...)`` of the stage that --corpus/--weights/--steps describe
OPTIONS = {"corpora": "--corpus", "weights": "--weights", "steps": "--steps"}


@dataclass
class Stage:
    corpora: list[str]
    steps: int
    weights: list[float] | None = None
    name: str = ""
    where: InitVar[str | None] = None  # how errors name the stage; default: by its name

    def __post_init__(self, where: str | None) -> None:
        """Reject a stage that cannot train. Errors name the setting: ``"{where}: weights"`` (``where``:
        the stage as its stages file writes it), or the option for the ``COMMAND_LINE`` stage."""
        if self.weights is None:
            self.weights = [1.0] * len(self.corpora)
        problem = self._problem()
        if problem is None:
            return
        setting, what = problem
        if where == COMMAND_LINE:
            raise TrainError(f"{OPTIONS[setting]} {what}")
        where = where or (f"stage {self.name!r}" if self.name else "stage")
        raise TrainError(f"{where}: {setting} {what}")

    @classmethod
    def from_options(cls, corpora: list[str], steps: int, weights: list[float] | None) -> "Stage":
        """The one stage of ``--corpus``/``--steps``/``--weights``, whose errors name those options."""
        return cls(corpora=corpora, steps=steps, weights=weights, name="main", where=COMMAND_LINE)

    def _problem(self) -> tuple[str, str] | None:
        """The first setting that cannot train and what it must be instead, or None."""
        if not self.corpora:
            return "corpora", "lists no corpus folders; expected at least one"
        if len(self.weights) != len(self.corpora):
            corpora = "1 corpus" if len(self.corpora) == 1 else f"{len(self.corpora)} corpora"
            return "weights", f"has {len(self.weights)} values for {corpora}; expected one per corpus"
        if any(not 0 <= w < math.inf for w in self.weights) or not 0 < sum(self.weights) < math.inf:
            return "weights", f"{self.weights} must be non-negative numbers with a positive, finite sum"
        if not _is_int(self.steps) or self.steps < 1:
            return "steps", f"must be an integer >= 1, got {self.steps!r}"
        return None


@dataclass
class TrainConfig:
    stages: list[Stage]
    model: str = "tiny"
    batch_size: int = 8  # rows per micro-batch per rank
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0
    seed: int = 0
    loss: str = "auto"
    device: str = "auto"
    save_every: int = 0  # steps between checkpoints; 0 = only at the end or on interrupt
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        """Reject settings that cannot train before anything is built, naming the setting: each must
        have its field's type (an int will do for a float; a bool only for a bool), and some a range."""
        for f in fields(self):
            if f.name == "stages":
                continue
            value = getattr(self, f.name)
            has_type, what = SETTING_TYPES[f.type]
            in_range, what = SETTING_RANGES.get(f.name, (None, what))
            if not has_type(value) or (in_range is not None and not in_range(value)):
                raise TrainError(f"{f.name} must be {what}, got {value!r}")

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["stages"] = [Stage(**s) for s in d["stages"]]
        return cls(**d)


TRAIN_KEYS = {f for f in TrainConfig.__dataclass_fields__ if f != "stages"}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit seed
SETTING_TYPES = {  # a field's type: (test of a value, what the value must be)
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an integer"),
    "float": (lambda v: isinstance(v, float) or (_is_int(v) and abs(v) <= sys.float_info.max), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}
SETTING_RANGES = {  # setting: (test of a value of the setting's type, what it must be)
    **dict.fromkeys(("batch_size", "grad_accum"), (lambda v: v >= 1, "an integer of at least 1")),
    **dict.fromkeys(("warmup", "save_every"), (lambda v: v >= 0, "a non-negative integer")),
    "seed": (lambda v: 0 <= v <= MAX_SEED, "an integer in [0, 2**63 - 1]"),
    "lr": (lambda v: 0 < v < math.inf, "a positive number"),
    "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a non-negative number"),
    **dict.fromkeys(("beta1", "beta2"), (lambda v: 0 <= v < 1, "in [0, 1)")),
    "clip": (lambda v: v > 0, "a positive number (inf: no clipping)"),
    "loss": (lambda v: v in LOSS_IMPLS, f"one of {', '.join(LOSS_IMPLS)}"),
}


def load_config_file(path: str | Path, overrides: dict) -> TrainConfig:
    """A TOML stages file: top-level training settings plus ``[[stage]]`` tables.

    Relative corpus paths are resolved against the file's folder. The file's settings are checked
    on their own, errors naming the file (and the stage); ``overrides`` (from the command line) then
    win over them.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrainError(f"{path}: cannot read the config file ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise TrainError(f"{path}: not valid TOML: {e}") from None
    stages_raw = raw.pop("stage", None)
    if not stages_raw or not isinstance(stages_raw, list) or not all(isinstance(s, dict) for s in stages_raw):
        raise TrainError(f"{path}: no [[stage]] tables; each needs corpora = [...] and steps = N")
    unknown = set(raw) - TRAIN_KEYS
    if unknown:
        raise TrainError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(TRAIN_KEYS)}")
    stages = [_stage_from_file(path, i, s) for i, s in enumerate(stages_raw)]
    try:
        cfg = TrainConfig(stages=stages, **raw)
    except TrainError as e:
        raise TrainError(f"{path}: {e}") from None
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def _stage_from_file(path: Path, i: int, s: dict) -> Stage:
    """Stage ``i`` (from 0) of stages file ``path``; errors name the file and the stage as written there
    (its number, and its name if it has one)."""
    name = s.get("name")
    where = f"{path}: stage {i + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
    extra = set(s) - {"corpora", "steps", "weights", "name"}
    if extra or "corpora" not in s or "steps" not in s:
        raise TrainError(f"{where} needs corpora and steps (optional weights, name); got {sorted(s)}")
    if not isinstance(s["corpora"], list) or not all(isinstance(c, str) for c in s["corpora"]):
        raise TrainError(f"{where}: corpora must be a list of corpus folders, e.g. corpora = [\"corpora/a\"]; "
                         f"got {s['corpora']!r}")
    weights = s.get("weights")
    numbers = isinstance(weights, list) and all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                                for w in weights)
    if weights is not None and not numbers:
        raise TrainError(f"{where}: weights must be a list of numbers, one per corpus; got {weights!r}")
    if name is not None and not isinstance(name, str):
        raise TrainError(f"{where}: name must be a string; got {name!r}")
    corpora = [str((path.parent / c).resolve()) if not Path(c).is_absolute() else c for c in s["corpora"]]
    return Stage(corpora=corpora, steps=s["steps"], weights=weights, name=f"stage{i + 1}" if name is None else name,
                 where=where)


# ---------------------------------------------------------------------------- data
class CorpusRows:
    """Rows of one corpus in a seeded order reshuffled each epoch; position is resumable state."""

    def __init__(self, path: str, seed: int):
        from .corpus import load

        self.dataset, self.scheme, self.tokenizer = load(path)
        self.dataset = self.dataset.with_format("numpy")
        self.path, self.seed = path, seed
        self.epoch, self.index = 0, 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))

    def take(self) -> int:
        if self.index >= len(self.order):
            self.epoch, self.index = self.epoch + 1, 0
            self.order = self._order()
        row = int(self.order[self.index])
        self.index += 1
        return row

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self.order = self._order()


class Mixture:
    """Draws (corpus, row) pairs for a stage with the stage's mixture weights."""

    def __init__(self, corpora: dict[str, CorpusRows], stage: Stage, seed: int, stage_index: int):
        self.names = stage.corpora
        self.sources = [corpora[c] for c in stage.corpora]
        w = np.asarray(stage.weights, dtype=np.float64)
        self.p = w / w.sum()
        self.rng = np.random.default_rng([seed, 1_000 + stage_index])

    def draw(self, n: int) -> list[tuple[int, int]]:
        picks = self.rng.choice(len(self.sources), size=n, p=self.p)
        return [(int(c), self.sources[c].take()) for c in picks]

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def collate(sources: list[CorpusRows], picks: list[tuple[int, int]], device) -> dict[str, torch.Tensor]:
    """Rows -> tensors [b, T]; ``targets`` are the inputs shifted left (last column: pad, weight 0)."""
    cols = {k: [] for k in ("input_ids", "position_ids", "loss_weight", "bin_ids")}
    for c, r in picks:
        row = sources[c].dataset[r]
        for k in cols:
            cols[k].append(row[k])
    batch = {k: torch.from_numpy(np.stack(v)) for k, v in cols.items()}
    ids = batch["input_ids"].long()                                            # [b, T]
    targets = torch.zeros_like(ids)
    targets[:, :-1] = ids[:, 1:]
    return {"input_ids": ids.to(device), "position_ids": batch["position_ids"].long().to(device),
            "targets": targets.to(device), "loss_weight": batch["loss_weight"].float().to(device),
            "bin_ids": batch["bin_ids"].long().to(device)}


# ---------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def check_device(spec: str) -> None:
    """``auto``, ``cpu`` or ``cuda[:N]`` that this machine has; a TrainError naming it otherwise."""
    if spec == "auto":
        return
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise TrainError(f"--device {spec!r}: not a device; use auto, cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda"):
        raise TrainError(f"--device {spec!r}: rcond trains on cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {spec}: CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise TrainError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def init_distributed(device_spec: str) -> tuple[Dist, torch.device]:
    check_device(device_spec)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device_spec == "auto" else device_spec.startswith("cuda")
    if world == 1:
        return Dist(), torch.device(("cuda" if use_cuda else "cpu") if device_spec == "auto" else device_spec)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if not use_cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return Dist(rank, world, local), torch.device(f"cuda:{local}" if use_cuda else "cpu")


def all_reduce_grads(params: list[torch.nn.Parameter], d: Dist, bucket_bytes: int = 32 << 20) -> None:
    """Sum gradients over ranks in flattened buckets (one collective per bucket)."""
    if d.world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    bucket, size = [], 0
    for g in grads + [None]:
        if g is not None:
            bucket.append(g)
            size += g.numel() * g.element_size()
        if bucket and (g is None or size >= bucket_bytes):
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            at = 0
            for b in bucket:
                b.copy_(flat[at:at + b.numel()].view_as(b))
                at += b.numel()
            bucket, size = [], 0


# ---------------------------------------------------------------------------- model and optimizer
def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def prepare_model(cfg: TrainConfig, corpora: dict[str, CorpusRows], scheme: ControlScheme, block_size: int):
    """Build or load the model; check that its tokenizer is the corpora's (fingerprints)."""
    first = next(iter(corpora.values()))
    if cfg.model in PRESETS:
        tokenizer = first.tokenizer
    else:
        tokenizer = load_spec_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    model = build_model(cfg.model, tokenizer, scheme, seed=cfg.seed, max_position_embeddings=block_size,
                        trust_remote_code=cfg.trust_remote_code)
    fp = tokenizer_fingerprint(tokenizer)
    for c in corpora.values():
        if c.scheme.tokenizer_fingerprint != fp:
            raise TrainError(f"corpus {c.path} was tokenized with a different tokenizer than model {cfg.model!r} "
                             f"(fingerprint {c.scheme.tokenizer_fingerprint[:12]} vs {fp[:12]}); re-run "
                             f"rcond preprocess with --tokenizer {cfg.model}")
    return model, tokenizer


def check_corpora(corpora: dict[str, CorpusRows]) -> tuple[ControlScheme, int]:
    """That the corpora agree (each one's own scheme and rows ``corpus.load`` checked): control
    tokens, block size, tokenizer. Returns the first corpus's scheme and its block size."""
    items = list(corpora.values())
    first = items[0]
    for c in items[1:]:
        if c.scheme.control_tokens != first.scheme.control_tokens:
            raise TrainError(f"corpora {first.path} and {c.path} use different control tokens "
                             f"({first.scheme.num_bins} vs {c.scheme.num_bins} bins); preprocess them with the "
                             f"same --bins")
        if c.scheme.options["block_size"] != first.scheme.options["block_size"]:
            raise TrainError(f"corpora {first.path} and {c.path} have different block sizes")
        if c.scheme.tokenizer_fingerprint != first.scheme.tokenizer_fingerprint:
            raise TrainError(f"corpora {first.path} and {c.path} were tokenized with different tokenizers; "
                             f"preprocess both with the same --tokenizer")
    return first.scheme, int(first.scheme.options["block_size"])


def _shown(edges: list[float]) -> str:
    return "[" + ", ".join(f"{e:.4g}" for e in edges) + "]"


def _kept(final: str) -> str:
    """The close of a bin-edge warning: which corpus's edges the saved model keeps."""
    return f"the saved model keeps the edges of {final}, through which `rcond sample --reward` maps a reward"


def edge_differences(corpora: dict[str, CorpusRows], final: str) -> list[str]:
    """Warnings for corpora that share control tokens but bin rewards at other edges than the
    first: an RTG token then stands for a different reward range in each (levels relative to each
    corpus — maybe intended, but never silently). ``final`` is the corpus whose edges the saved
    model keeps, through which ``sample --reward`` maps a raw reward."""
    items = list(corpora.values())
    first = items[0]
    return [f"{first.path} and {c.path} bin rewards at different edges ({_shown(first.scheme.edges)} vs "
            f"{_shown(c.scheme.edges)}): the same RTG token stands for a different reward range in each; "
            f"{_kept(final)}"
            for c in items[1:] if list(c.scheme.edges) != list(first.scheme.edges)]


def warmup_note(cfg: TrainConfig) -> list[str]:
    """A warmup longer than the run: the learning rate rises all run (``lr_lambda``) and never reaches
    the peak the run asked for, which is easy to miss in a short trial run."""
    total = cfg.total_steps
    if cfg.warmup <= total:
        return []
    return [f"a warmup of {cfg.warmup} steps is longer than the run's {total}: the learning rate rises all run and "
            f"ends at {cfg.lr * total / cfg.warmup:.3g}, not the peak lr {cfg.lr:g}, and never decays; give --warmup "
            f"{total} or fewer (warmup in a config file), or more steps"]


def start_scheme(model: str) -> ControlScheme | None:
    """The scheme.json of the model a run starts from, where that is a local folder rcond saved a
    model to; None for a preset, a hub id or another causal LM's folder, which carry none. A
    damaged one raises SchemeError."""
    path = Path(model).expanduser()
    if model in PRESETS or not (path / SCHEME_FILE).is_file():
        return None
    return ControlScheme.load(path)


def start_model_differences(model: str, corpora: dict[str, CorpusRows], final: str) -> list[str]:
    """Warnings for a run that starts from a model rcond trained (a folder with the scheme.json
    that ``save_pretrained_atomic`` writes) on corpora whose RTG tokens stand for other reward
    ranges than in that model's training: other bin edges, or another number of bins (the RTG
    tokens both share then split the rewards differently). The model's earlier conditioning is then
    trained over — maybe intended, but never silently. Presets and hub ids carry no scheme."""
    try:
        before = start_scheme(model)
    except SchemeError as e:
        return [f"{e}; whether the corpora's RTG tokens mean what they meant in {model}'s training is not checked"]
    if before is None:
        return []
    keep = (f" (to keep the model's, preprocess with --binning edges:{','.join(map(repr, before.edges))})"
            if before.edges else "")
    return [f"{model} was trained with {before.num_bins} RTG bins at edges {_shown(before.edges)}, and {c.path} "
            f"bins rewards into {c.scheme.num_bins} at {_shown(c.scheme.edges)}: an RTG token the two share now "
            f"stands for another reward range than in the model's training{keep}; {_kept(final)}"
            for c in corpora.values()
            if c.scheme.rtg_template == before.rtg_template
            and (c.scheme.num_bins, list(c.scheme.edges)) != (before.num_bins, list(before.edges))]


def learned_formats(model: str, corpora: dict[str, CorpusRows]) -> list[str]:
    """The corpus formats (``scheme.options["format"]``) a run's model learns: those of all its
    corpora, every stage's, and where it starts from a model rcond trained, those that model
    learned (its ``formats``, or its ``format`` if saved before they were recorded). The model's
    scheme.json records them, so that ``rcond sample`` lays out each prompt as the corpora of its
    kind did, whichever corpus came first (a dialog's turns with the RTG token after them,
    another prompt with it before)."""
    formats = {f for c in corpora.values() for f in c.scheme.learned_formats()}
    with contextlib.suppress(SchemeError):  # a damaged one is warned of by start_model_differences
        before = start_scheme(model)
        if before is not None:
            formats |= set(before.learned_formats())
    return sorted(formats)


def model_scheme(scheme: ControlScheme, formats: list[str], checkpoint: Path | None) -> ControlScheme:
    """The scheme a run's model is saved with: its last stage's first corpus's, recording the
    ``formats`` the model learned, with those its ``checkpoint``'s scheme recorded when the run
    resumes (the model it started from may be elsewhere by then, or gone), and its
    ``options.scheme_sha256`` made again over what it now holds."""
    from .corpus import scheme_sha256

    if checkpoint is not None and (checkpoint / SCHEME_FILE).is_file():
        with contextlib.suppress(SchemeError):
            formats = sorted(set(formats) | set(ControlScheme.load(checkpoint).learned_formats()))
    scheme = replace(scheme, options={**scheme.options, "formats": formats})
    if "scheme_sha256" in scheme.options:
        scheme.options["scheme_sha256"] = scheme_sha256(scheme)
    return scheme


def check_corpora_unchanged(config_file: Path, corpora: dict[str, CorpusRows]) -> None:
    """On resume: every corpus must still be the one the run started on. Its rows are checked
    against its scheme.json by ``load``; this compares each scheme.json (bin edges, control tokens,
    fingerprints of the rows and the tokenizer) with the copy the run recorded when it started."""
    try:
        recorded = json.loads(config_file.read_text())["schemes"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TrainError(f"--resume: {config_file} is missing or unreadable; it records the corpora the run "
                         f"started on") from None
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(path), dict) for path in corpora):
        raise TrainError(f"--resume: {config_file} is damaged: its \"schemes\" must map every corpus of the run "
                         f"({', '.join(corpora)}) to the scheme.json it had when the run started")
    for path, c in corpora.items():
        now = json.loads(json.dumps(c.scheme.to_dict()))  # as recorded: through JSON
        before = recorded[path]
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise TrainError(f"--resume: corpus {path} changed since the run started ({', '.join(changed)} in its "
                             f"scheme.json differ); resume with the corpus as it was, or start a new run")


# ---------------------------------------------------------------------------- the loop
class _StopFlag:
    """SIGINT/SIGTERM -> finish the step, checkpoint, exit (a second signal aborts at once)."""

    def __init__(self):
        self.set = interrupt_recorded()  # a signal recorded since set-up ended (its KeyboardInterrupt dropped)
        self.previous = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


@dataclass
class RunResult:
    out: Path
    steps_done: int
    interrupted: bool
    tokens: float
    seconds: float
    last_loss: float
    log: list[dict] = field(default_factory=list)


def train(cfg: TrainConfig | None, out: str | Path, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Run a training run writing into ``out``; with ``resume`` continue it (its saved config is used,
    ``cfg`` must be None). Returns what happened."""
    if resume and cfg is not None:
        raise TrainError("resume continues with the run's saved configuration; pass cfg=None")
    out = check_out(out)
    # every rank checks, before the rendezvous: no rank can have created ``out`` yet, and none is
    # left waiting in a collective for one that stopped here. A run that failed before its first
    # checkpoint left only its config and log: nothing to resume, so a fresh start replaces them.
    if not resume and out.exists() and any(p.name not in (CONFIG_FILE, CONFIG_STAGED, LOG_FILE) for p in out.iterdir()):
        raise TrainError(f"{out} already exists; pass --resume to continue that run or choose another --out")
    state = _load_state(out / CHECKPOINT_DIR) if resume else None
    if state is None:
        cfg = absolute_corpora(cfg)
    else:
        cfg = TrainConfig.from_dict(state["config"])
        # every step done but no model/ (the run stopped while writing it, after the last checkpoint):
        # the resume trains nothing and publishes the model from that checkpoint
        if state["step"] >= cfg.total_steps and (out / MODEL_DIR).is_dir():
            raise TrainError(f"--resume: the run in {out} already finished its {cfg.total_steps} steps; "
                             f"nothing to continue (its model is in {out / MODEL_DIR})")
    d, device = init_distributed(cfg.device)
    try:
        with recording_interrupts():  # a Ctrl-C that Python drops during set-up still stops the run
            return _train(cfg, out, d, device, state, progress)
    finally:
        if d.world > 1:
            dist.destroy_process_group()


def check_out(out: str | Path) -> Path:
    """The run directory ``--out`` as a Path; refused when it is empty, or it or a folder above it is a file."""
    if not str(out).strip():
        raise TrainError("--out is empty; expected the run directory to write model/, checkpoint/ and log.jsonl into")
    out = Path(out)
    blocking = file_in_the_way(out, itself=True)
    if blocking is not None:
        raise TrainError(f"--out {out}: {blocking} is a file, not a folder; expected a run directory (a new one, "
                         f"or a run's to --resume)")
    return out


def absolute_corpora(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every corpus path resolved, as the run records them: it resumes from any folder."""
    return replace(cfg, stages=[replace(s, corpora=[str(Path(c).resolve()) for c in s.corpora]) for s in cfg.stages])


def _train(cfg: TrainConfig, out: Path, d: Dist, device: torch.device, state: dict | None,
           progress: bool) -> RunResult:
    if cfg.loss == "triton" and device.type != "cuda":
        raise TrainError(f"--loss triton needs a CUDA device and this run is on {device}; use --loss auto "
                         f"(triton on CUDA, torch elsewhere) or --loss torch")
    ckpt = out / CHECKPOINT_DIR
    resume = state is not None
    saved_world = state.get("world", 1) if resume else d.world
    if saved_world != d.world:
        raise TrainError(f"{ckpt}: the run was trained on {saved_world} process(es) and is resumed on {d.world}; "
                         f"that would change the rows per step (batch_size × grad_accum × processes). "
                         f"Resume it on {saved_world} process(es).")
    torch.manual_seed(cfg.seed)
    paths = list(dict.fromkeys(c for s in cfg.stages for c in s.corpora))
    corpora = {p: CorpusRows(p, cfg.seed + i) for i, p in enumerate(paths)}
    scheme, block_size = check_corpora(corpora)
    final_scheme = model_scheme(corpora[cfg.stages[-1].corpora[0]].scheme, learned_formats(cfg.model, corpora),
                                ckpt if resume else None)
    if resume:
        check_corpora_unchanged(out / CONFIG_FILE, corpora)
        from .modeling import load_pretrained

        model, tokenizer, _ = load_pretrained(ckpt, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)
    else:
        model, tokenizer = prepare_model(cfg, corpora, scheme, block_size)
    model.to(device).train()
    head = output_head(model)
    optimizer = make_optimizer(model, cfg, device)
    total = cfg.total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.warmup, total, cfg.min_lr_ratio))
    step = 0
    mixtures = [Mixture(corpora, s, cfg.seed, i) for i, s in enumerate(cfg.stages)]
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        data = json.loads(state["data"])
        for p, s in data["corpora"].items():
            corpora[p].restore(s)
        for m, s in zip(mixtures, data["mixtures"]):
            m.restore(s)
    # every rank stops here together if any saw a signal during set-up (its KeyboardInterrupt may have
    # been dropped inside a finalizer): nothing is trained or written
    if d.all_sum(torch.tensor([float(interrupt_recorded())], device=device)).item() > 0:
        raise KeyboardInterrupt("a signal arrived while the run was being set up")
    if d.main:
        final = cfg.stages[-1].corpora[0]
        for warning in (start_model_differences(cfg.model, corpora, final) + edge_differences(corpora, final)
                        + warmup_note(cfg)):
            print(f"warning: {warning}", file=sys.stderr)
        with creating(out):
            out.mkdir(parents=True, exist_ok=True)
        # whole or not at all: on a resume, the other ranks may be reading it (check_corpora_unchanged)
        staged = out / CONFIG_STAGED
        staged.write_text(json.dumps({"config": cfg.to_dict(), "schemes": {
            p: c.scheme.to_dict() for p, c in corpora.items()}}, indent=2) + "\n")
        os.replace(staged, out / CONFIG_FILE)
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    # The model's last norm returns the fp32 residual stream even under autocast; autocast would run
    # the head's matmul on bf16 inputs, so the loss gets bf16 activations against the fp32 master
    # weight (on CUDA; fp32 inputs would put the fused loss on fp32 arithmetic, not tensor cores).
    head_dtype = torch.bfloat16 if device.type == "cuda" else None
    K = scheme.num_bins
    micro_per_step = cfg.grad_accum * d.world
    log_path = out / LOG_FILE
    if d.main and not resume and log_path.exists():
        log_path.unlink()
    if d.main and resume and log_path.exists():
        _truncate_log(log_path, step)
    log_file = open(log_path, "a") if d.main else None
    bar = _progress(total, step, progress and d.main)
    t_start, tokens_seen, last_loss, interrupted = time.perf_counter(), 0.0, float("nan"), False
    records = []

    def save_checkpoint():
        if d.main:
            data = {"corpora": {p: c.state() for p, c in corpora.items()},
                    "mixtures": [m.state() for m in mixtures]}
            training_state = {"step": step, "config": cfg.to_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                              "data": json.dumps(data), "world": d.world}
            save_pretrained_atomic(model, tokenizer, final_scheme, ckpt,
                                   extra=lambda tmp: torch.save(training_state, tmp / STATE_FILE))
        if d.world > 1:
            dist.barrier()

    with _StopFlag() as stop:
        while step < total:
            stage_i, stage_step = _stage_at(cfg, step)
            picks = mixtures[stage_i].draw(micro_per_step * cfg.batch_size)
            batches = [picks[m * cfg.batch_size:(m + 1) * cfg.batch_size] for m in range(micro_per_step)]
            mine = batches[d.rank::d.world]
            sources = mixtures[stage_i].sources
            t0 = time.perf_counter()
            micro = [collate(sources, b, device) for b in mine]
            local_w = sum(float(m["loss_weight"].sum()) for m in micro)
            global_w = float(d.all_sum(torch.tensor([local_w], dtype=torch.float64, device=device)).item())
            if global_w <= 0:
                raise TrainError(f"step {step + 1}: the rows drawn carry no trained tokens (all loss weights 0)")
            stats = torch.zeros(2 + 2 * K, dtype=torch.float64, device=device)  # loss, weight, bin loss, bin weight
            for m in micro:
                try:
                    with autocast:
                        hidden = packed_hidden(model, m["input_ids"], m["position_ids"])   # [b, T, D]
                    if head_dtype is not None:
                        hidden = hidden.to(head_dtype)
                    D = hidden.shape[-1]
                    res = packed_conditional_loss(
                        hidden.reshape(-1, D), head.weight, m["targets"].reshape(-1), m["loss_weight"].reshape(-1),
                        None, m["bin_ids"].reshape(-1), num_bins=K, bias=head.bias, softcap=head.softcap,
                        logit_scale=head.logit_scale, impl=cfg.loss)
                    (res.loss_sum / global_w).backward()
                except torch.OutOfMemoryError as e:
                    raise TrainError(f"out of memory with --batch-size {cfg.batch_size} rows of {block_size} "
                                     f"tokens: lower --batch-size and raise --grad-accum to keep the same "
                                     f"global batch") from e
                stats += torch.cat([res.loss_sum.detach().reshape(1), res.weight_sum.detach().reshape(1),
                                    res.bin_loss.detach(), res.bin_weight.detach()]).double()
            all_reduce_grads(params, d)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            d.all_sum(stats)
            dt = time.perf_counter() - t0
            rec = _log_record(step, cfg.stages[stage_i].name, stats.cpu().numpy(), K, lr, float(grad_norm), dt,
                              micro_per_step * cfg.batch_size * block_size)
            tokens_seen += rec["trained_tokens"]
            last_loss = rec["loss"]
            records.append(rec)
            if d.main:
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:,.0f}")
            flag = d.all_sum(torch.tensor([float(stop.set)], device=device))
            if flag.item() > 0 and step < total:
                interrupted = True
                break
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                save_checkpoint()
    bar.close()
    save_checkpoint()
    if d.main:
        log_file.close()
        if not interrupted:
            save_pretrained_atomic(model, tokenizer, final_scheme, out / MODEL_DIR)
    return RunResult(out, step, interrupted, tokens_seen, time.perf_counter() - t_start, last_loss, records)


def _stage_at(cfg: TrainConfig, step: int) -> tuple[int, int]:
    for i, s in enumerate(cfg.stages):
        if step < s.steps:
            return i, step
        step -= s.steps
    raise AssertionError("step beyond the last stage")


def _log_record(step, stage, stats, K, lr, grad_norm, dt, slots) -> dict:
    loss_sum, w = stats[0], stats[1]
    bin_loss, bin_w = stats[2:2 + K], stats[2 + K:]
    rec = {"step": step, "stage": stage, "loss": loss_sum / w, "lr": lr, "grad_norm": grad_norm,
           "trained_tokens": w, "tokens_per_s": slots / dt, "seconds": dt}
    on_w = bin_w.sum()
    rec["loss_on"] = float(bin_loss.sum() / on_w) if on_w > 0 else None
    rec["loss_off"] = float((loss_sum - bin_loss.sum()) / (w - on_w)) if w - on_w > 0 else None
    for k in range(K):
        rec[f"loss_bin_{k}"] = float(bin_loss[k] / bin_w[k]) if bin_w[k] > 0 else None
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in rec.items()}


def _truncate_log(log_path: Path, step: int) -> None:
    """Keep the log's records up to the checkpoint's ``step``: after a crash between checkpoints
    the later steps are trained again and would otherwise be logged twice. A record cut short by
    the crash is dropped too. Rewritten through a temp file, then renamed."""
    kept = []
    for line in log_path.read_text().splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, log_path)


def _load_state(ckpt: Path) -> dict:
    if not ckpt.is_dir():
        raise TrainError(f"--resume: no checkpoint at {ckpt} (nothing to resume; start without --resume)")
    path = ckpt / STATE_FILE
    if not path.is_file():
        raise TrainError(f"--resume: {ckpt} is missing {STATE_FILE}; the checkpoint is incomplete")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise TrainError(f"--resume: {path} is corrupt or not an rcond training state ({type(e).__name__}: {e})") from None


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)
