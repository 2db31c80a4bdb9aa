"""Training: the reusable ERM trainer (checkpoints, exact resume, callbacks for methods),
losses, backbones from timm, and weight files.

Imports data/ and the bottom layer (errors, files, seeds) only; the run context is named in
annotations alone, because the context sits above the trainer and binds it to a run.
"""
