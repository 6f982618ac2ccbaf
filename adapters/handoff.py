"""The mapping of one transformer call from the large model's latent space into the small model's, and back."""

from __future__ import annotations

from typing import Any

import torch


class Handoff:
    """Maps one transformer call from the large model's latent space into the small model's, and back.

    The base class is the identity: used where both models share latents, timesteps and embeddings.
    """

    def begin_call(self, pipe: Any) -> None:
        """Called once at the start of every pipeline call (the scheduler may have been replaced)."""

    def map_inputs(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Return the small model's keyword arguments and whatever `map_output` needs."""
        return kwargs, None

    def map_output(self, output: torch.Tensor, state: Any) -> torch.Tensor:
        """Turn the small model's prediction into the large model's."""
        return output
