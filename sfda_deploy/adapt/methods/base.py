"""What a method is: a frozen config dataclass (spec defaults) + a list of stages.

See ``sfda_deploy/adapt/loop.py`` for the full contract. This module only holds the small records
the loop and the methods share, so neither imports the other's internals.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from sfda_deploy.classes import suggest
from sfda_deploy.config_values import check_keys, check_values
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural


@dataclass(frozen=True)
class LoopConfig:
    """Loop-level defaults every method config inherits (override per recipe, or with ``--set``).

    Attributes:
        iters: iterations per stage.
        batch: images per stream per iteration (per process under torchrun).
        crop: ``(H, W)`` random crop of the target images (smaller images are padded, label 255).
        lr: base learning rate; head parameters get ``lr * head_lr_mult``.
        optimizer: ``adamw`` or ``sgd``.
        betas / momentum / nesterov: AdamW betas, SGD momentum.
        weight_decay: decoupled (AdamW) or L2 (SGD).
        warmup_iters / warmup_ratio: linear warm-up from ``lr * warmup_ratio`` over that many iterations.
        poly_power: ``lr * (1 - t/T) ** power`` after warm-up (power 1 = linear decay to 0).
        poly_horizon: T of the poly decay: 0 = the stage's iterations; N > 0 = N steps counted from the
            start of each round (LDBE's 5000-step horizon, restarted every round).
        round_fresh_optimizer: clear the optimizer's state (momentum) at each round start, as a recipe
            that re-creates its optimizer every round does (LDBE).
        head_lr_mult: learning-rate multiplier of ``model.is_head_parameter`` parameters (and extras).
        ema_alpha: the EMA teacher's α_max.
        ema_ramp: α_t = min(1 − 1/(t+1), α_max) (DACS/ATP/LDBE) when true; α_max at every update (HIAST,
            CPSL) when false.
        teacher_buffers: ``keep`` (buffers stay as initialised, the DACS/ATP code) or ``copy``
            (copied from the student every update).
        teacher_bn: ``batch`` (teacher forwards in train mode, BN uses batch statistics, as DACS/ATP
            whose EMA model is never put in eval mode) or ``eval`` (running statistics).
        student_bn: the student's BatchNorm layers while it trains: ``train`` (batch statistics, running
            statistics follow the training crops: mmseg's ``norm_eval=False``, the DAFormer/ATP code),
            ``frozen`` (eval mode: the running statistics the stage starts with are kept; γ, β still train) or
            ``adabn`` (the running statistics re-estimated on the whole target images at the stage's start,
            as AdaBN does, then frozen).
        flip: random horizontal flip probability of the loop's crop.
        checkpoint_every: iterations between resumable checkpoints (0: only at stage ends).
        preview_every: iterations between pseudo-label previews (0: none).
    """

    iters: int = 2000
    batch: int = 2
    crop: tuple[int, int] = (512, 512)
    lr: float = 6e-5
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.01
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    poly_horizon: int = 0
    round_fresh_optimizer: bool = False
    head_lr_mult: float = 10.0
    ema_alpha: float = 0.999
    ema_ramp: bool = True
    teacher_buffers: str = "keep"
    teacher_bn: str = "batch"
    student_bn: str = "train"
    flip: float = 0.5
    checkpoint_every: int = 500
    preview_every: int = 0


@dataclass
class StageState:
    """Everything a stage's ``step`` may read besides the batch and the two networks.

    Attributes:
        meta: the student's ``ModelMeta`` (``meta.normalize(images)`` before every forward).
        iteration: 0-based iteration within the stage (the one being computed).
        iters: total iterations of the stage.
        generator: ``torch.Generator`` on the training device, for augmentation draws
            (checkpointed, so a resumed run draws the same numbers).
        store: the method's own state, returned by ``prepare`` and mutated by ``step`` (class
            thresholds, prototypes, easy/hard splits). Must hold only tensors, numbers, strings,
            lists/tuples/dicts of those: it is checkpointed and loaded with ``weights_only=True``.
        extras: trainable modules of the method (e.g. a projection head), created by
            ``Stage.extras``; the loop optimises them with the student and EMAs them into
            ``teacher_extras``.
        want_preview: True at the iterations whose previews the loop saves.
        previews: the step may put ``{"image": [B,3,H,W] 0-255, "pseudo": [B,H,W], "pred": [B,H,W]}``
            here; the loop saves it at preview iterations.
        rank / world: process index and count (``torchrun``).
        frozen: for stages with ``rounds``: an eval-mode, gradient-free copy of the network taken at
            the start of the current round (the round's pseudo-label model; checkpointed).
    """

    meta: Any
    iteration: int
    iters: int
    generator: torch.Generator
    store: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.nn.Module] = field(default_factory=dict)
    teacher_extras: dict[str, torch.nn.Module] = field(default_factory=dict)
    previews: dict[str, torch.Tensor] = field(default_factory=dict)
    want_preview: bool = False
    rank: int = 0
    world: int = 1
    frozen: Optional[torch.nn.Module] = None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return self.meta.normalize(images)


@dataclass(frozen=True)
class PrepareContext:
    """What ``Stage.prepare`` gets: a pass over the target data before the stage starts.

    Attributes:
        model: the student (eval mode during ``prepare``) on ``device``.
        meta: its ``ModelMeta``.
        dataset: the target training dataset (items per docs/contracts.md, labels stripped).
        device: torch device.
        cfg: the method config.
        progress: show a progress bar.
    """

    model: torch.nn.Module
    meta: Any
    dataset: Any
    device: torch.device
    cfg: Any
    progress: bool = True


StepFn = Callable[..., dict]


@dataclass(frozen=True)
class Stage:
    """One stage of a recipe.

    Attributes:
        name: short name used by ``--stages`` (e.g. ``A``).
        step: ``step(batch, student, teacher, state, cfg) -> {loss name: scalar tensor}``.
        prepare: optional ``prepare(ctx: PrepareContext) -> dict`` run before the stage (and not
            again on resume: its result is checkpointed in ``state.store``).
        streams: names of the index subsets batches are drawn from; ``("target",)`` draws from
            the whole dataset; other names must be keys of ``store["streams"]`` (lists of dataset
            indices) set by ``prepare``. ``batch`` maps each stream name to its collated batch.
        teacher: whether the stage needs the EMA teacher (None is passed otherwise).
        labels: whether the step receives target labels (only supervised recipes: source-free
            methods never see them; the loop strips them).
        extras: optional ``extras(model, cfg) -> {name: nn.Module}`` trainable add-ons.
        description: one line for logs and ``--help``.
        check: optional ``check(num_images, cfg)`` run before the run directory is made; raises
            SfdaError when the target set cannot feed the stage (e.g. too few images for a split).
        check_model: optional ``check_model(model)``, same moment: raises SfdaError when the stage
            cannot work on this network (AdaBN on a model without BatchNorm).
        cfg: the config this stage runs with when it is borrowed from another recipe (``--propagate``
            appends ATP's P to any method); None: the method's config.
        rounds: optional ``rounds(cfg) -> R``: the stage's ``cfg.iters`` iterations are split into
            ``R`` rounds (``round_bounds``). At each round start the loop snapshots ``snapshot``
            (``student``, or ``teacher`` = the EMA teacher from round 1 on) into ``state.frozen``
            and calls ``round_start``.
        round_start: optional ``round_start(ctx, store, r) -> store``: a pass over the target set
            with ``ctx.model = state.frozen`` (LDBE's class thresholds) or a reset of per-round state
            (IAS θ). ``store["lr_scale"]`` (if set) multiplies the learning rate from then on.
        snapshot: ``student`` or ``teacher`` (see ``rounds``).
    """

    name: str
    step: StepFn
    prepare: Optional[Callable[[PrepareContext], dict]] = None
    streams: tuple[str, ...] = ("target",)
    teacher: bool = False
    labels: bool = False
    extras: Optional[Callable[[torch.nn.Module, Any], dict]] = None
    description: str = ""
    check: Optional[Callable[[int, Any], None]] = None
    check_model: Optional[Callable[[torch.nn.Module], None]] = None
    cfg: Any = None
    rounds: Optional[Callable[[Any], int]] = None
    round_start: Optional[Callable[[PrepareContext, dict, int], dict]] = None
    snapshot: str = "student"


def round_bounds(iters: int, rounds: int) -> list[int]:
    """First iteration of each round: round ``r`` covers ``[⌊r·T/R⌋, ⌊(r+1)·T/R⌋)``."""
    return [r * iters // rounds for r in range(rounds)]


def round_of(t: int, iters: int, rounds: int) -> int:
    """The 0-based round of iteration ``t`` (``round_bounds``)."""
    return max(r for r, start in enumerate(round_bounds(iters, rounds)) if start <= t)


# Iteration counts inside a recipe's schedule that keep their share of it when --iters changes.
SCHEDULE_FIELDS = ("warmup_iters", "contrast_start")


def scaled_schedule(default, iters: int, explicit: set[str]) -> dict[str, int]:
    """Schedule points of ``default`` (a recipe config) moved to a budget of ``iters`` iterations.

    ATP warms up for 1500 of 40 000 iterations: with ``--iters 4000`` it warms up for 150, not for
    1500 (which would keep the lr below its nominal value for a third of the run). The EMA teacher's
    α is NOT scaled: tried (α' = 1 − (1 − α)·T₀/T, a memory of the same share of the run), it made
    stage T worse on the synthetic benchmark (18.5 vs 20.3 mIoU at 200 it): a slow teacher is what
    keeps a short run's pseudo labels stable. Fields the user set (``explicit``) are left alone;
    at the recipe's own budget nothing changes.
    """
    if iters == default.iters or default.iters == 0:  # 0: a training-free recipe has no schedule
        return {}
    return {f: round(getattr(default, f) * iters / default.iters) for f in SCHEDULE_FIELDS
            if hasattr(default, f) and f not in explicit}


@dataclass(frozen=True)
class Method:
    """A registered recipe: its config class and stages (run in order by default).

    ``trains=False``: a training-free recipe (AdaBN): its stages run no iterations, ``--iters/--batch/
    --crop/--lr`` do not apply to it and ``compare`` gives it no budget.
    """

    name: str
    config: type
    stages: tuple[Stage, ...]
    description: str = ""
    trains: bool = True

    def select(self, names: Optional[str]) -> tuple[Stage, ...]:
        """Stages named in ``--stages`` (comma separated), in the recipe's order."""
        if not names:
            return self.stages
        valid = [s.name for s in self.stages]
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        for n in wanted:
            if n not in valid:
                raise SfdaError(f"unknown stage '{n}' for method {self.name}{suggest(n, valid)}: "
                                f"valid stages are {','.join(valid)}")
        return tuple(s for s in self.stages if s.name in wanted)

    def make_config(self, options: dict[str, Any], **loop_overrides: Any):
        """Config with ``--set`` options and the common flags (``--iters``...) applied."""
        check_keys(self.config, options, f"method {self.name}")
        values = {k: v for k, v in loop_overrides.items() if v is not None}
        values.update(options)
        values = check_values(self.config, values, lambda name: f"--set {name}")  # types and ranges
        default = self.config()
        values.update(scaled_schedule(default, values.get("iters", default.iters), set(options)))
        try:
            cfg = dataclasses.replace(default, **values)
        except (TypeError, ValueError) as e:
            raise SfdaError(f"bad option for method {self.name} ({e}): check --set values") from None
        for stage in self.stages:
            rounds = stage.rounds(cfg) if stage.rounds else 1
            if self.trains and rounds > cfg.iters:
                raise SfdaError(f"method {self.name} runs {rounds} rounds but the budget is "
                                f"{plural(cfg.iters, 'iteration')}: use --iters {rounds} or more")
        return cfg
