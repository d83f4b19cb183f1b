"""The training app: the LightningModules of the selector and of the judge on one
reconstruction base, their objective, masks, metrics, schedule, callbacks, checkpoints, and the
fit and stage commands. Needs the ``train`` extra; ``vtsel.models`` and ``vtsel.inference`` do
not import it."""

from vtsel.train.judge_module import JudgeModule
from vtsel.train.selector_module import SelectorModule
from vtsel.train.task import ReconstructionTask

__all__ = ["JudgeModule", "ReconstructionTask", "SelectorModule"]
