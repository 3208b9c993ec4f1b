"""AdaBN (Li et al. 2016): the source weights with BatchNorm statistics re-estimated on the target.

The training-free baseline every comparison carries (``compare`` always runs it): one pass over the
unlabelled target train images, seconds, no hyper-parameter to tune. Stage ``BN`` does the pass in
its ``prepare`` (``adapt/batchnorm.py``, on the student in place) and runs no iterations, so the
loop writes the usual run directory (model with metadata, metrics before/after, log).

Whole images, one per forward (not the loop's random crops): the statistics are those of the frames
the model will see when deployed (evaluate and segment run on whole images), the result depends
neither on the seed nor on the order of the images, and no crop padding leaks into the means. Each
image counts once; a folder of mixed resolutions weighs its images equally, not its pixels.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from sfda_deploy.adapt.batchnorm import batchnorm_layers, reestimate_batchnorm, statistics_scope
from sfda_deploy.adapt.methods.base import LoopConfig, Method, PrepareContext, Stage
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import say
from sfda_deploy.progress import progress


@dataclass(frozen=True)
class AdabnConfig(LoopConfig):
    """AdaBN has no hyper-parameter: no iterations (``iters`` stays 0), whole images, batch 1."""

    iters: int = 0
    checkpoint_every: int = 0

    def __post_init__(self):
        if self.iters != 0:
            raise ValueError("AdaBN trains nothing, iters must stay 0")


def check_batchnorm(model) -> None:
    """A model without BatchNorm running statistics leaves AdaBN nothing to re-estimate."""
    if not batchnorm_layers(model):
        raise SfdaError(f"the source model ({type(model).__name__}) has no BatchNorm layer, so AdaBN has no "
                        "statistics to re-estimate: use a method that trains (e.g. --method atp)")


def target_inputs(dataset, meta, device, show_progress: bool = True):
    """Each image of ``dataset``, whole, normalised for the model: ``[1,3,H,W]`` on ``device``."""
    for i in progress(range(len(dataset)), desc="AdaBN pass", disable=not show_progress, unit="image"):
        yield meta.normalize(dataset[i]["image"].unsqueeze(0).to(device))


def announce_scope(model) -> None:
    """On a LayerNorm model (SegFormer, DAFormer: BatchNorm only in the head), say which layers AdaBN reaches."""
    scope = statistics_scope(model, "AdaBN")
    if scope:
        say(f"note: {scope}")


def prepare_adabn(ctx: PrepareContext) -> dict:
    """Re-estimate the student's BatchNorm statistics on the target images (in place); no method state."""
    announce_scope(ctx.model)
    reestimate_batchnorm(ctx.model, target_inputs(ctx.dataset, ctx.meta, ctx.device, ctx.progress))
    return {}


def adabn_copy(model, dataset, meta, device, show_progress: bool = True):
    """A copy of ``model`` with the AdaBN pass of this method over ``dataset`` (the selection's baseline:
    the same model ``--method adabn`` ships); ``model`` is left as it was."""
    baseline = copy.deepcopy(model)
    announce_scope(baseline)
    reestimate_batchnorm(baseline, target_inputs(dataset, meta, device, show_progress))
    return baseline


def step_none(batch, student, teacher, state, cfg) -> dict:
    """Never called: the stage has no iterations."""
    raise RuntimeError("AdaBN runs no training iteration")


METHOD = Method("adabn", AdabnConfig, (
    Stage("BN", step_none, prepare=prepare_adabn, check_model=check_batchnorm,
          description="BatchNorm statistics re-estimated on the target images"),
), "AdaBN: BatchNorm statistics re-estimated on the target (training-free baseline)", trains=False)
