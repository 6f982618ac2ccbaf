"""What a pipeline's call tracker (`sr_plugin.pipeline.calls`) tells its listeners: the one listener protocol, at
the ground floor, so that every room with something to do at a call's start, its steps or its end (the switch, the
accelerations, the integrations' standard listeners, the calibration's tools) writes the same methods."""

from __future__ import annotations

from typing import Any


class CallListener:
    """A listener of one pipeline's calls. Every method is a no-op here: a listener writes the ones it needs.

    Per call: ``begin`` (after the pipeline set its timesteps), ``prepare`` (once every listener began, and may
    have added caches: the models in play set up for the call), ``after_step`` (the guided output and sample of
    each step), ``step_ended`` (after the step's callback), ``end`` (also on error or interruption). Per model in
    play: ``check_model`` (every error before anything changes), ``model_joined``, ``model_left``. ``calls`` is the
    pipeline's `CallTracker`; ``model`` a torch module."""

    def begin(self, calls: Any) -> None:
        pass

    def prepare(self, calls: Any) -> None:
        pass

    def after_step(self, calls: Any, model_output: Any, sample: Any) -> None:
        pass

    def step_ended(self, calls: Any) -> None:
        pass

    def end(self, calls: Any) -> None:
        pass

    def check_model(self, model: Any, role: str) -> None:
        pass

    def model_joined(self, model: Any, role: str) -> None:
        pass

    def model_left(self, model: Any, role: str) -> None:
        pass
