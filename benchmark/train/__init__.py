"""Training: backbones (models), losses, the reusable trainer and its extension API for methods
(trainer; see docs/trainer.md), resume checkpoints (checkpoint) and the weights-file saver (weights).

This layer sits below the run context: it may import data/, errors, files and seeds, and names
`dermbench.context.RunContext` only for type annotations."""
