"""The plugin contract: hooks a method implements. Every hook takes keyword arguments.

A method only implements what it changes; the built-in ERM method supplies `fit` and
`predict` with trylast=True, so any other method's `fit`/`predict` wins, and `fit`
wrappers (wrapper=True) run around whichever `fit` answers.
"""

from __future__ import annotations

import pluggy

PROJECT = "dermbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def dermbench_method_defaults(profile: str, dataset: str) -> dict:
    """The method's settings for `profile` ("tiny" or "paper") on training dataset `dataset`, as
    a nested dict merged into the run config (an implementation may take `profile` alone: a
    paper's protocol can differ per dataset, e.g. FairQuantize on Fitzpatrick17k and ISIC 2019). A method's own hyperparameters go under a key with its name, e.g.
    {"fairquantize": {"beta": 1.0}}; it may also set shared sections such as "train"."""


@hookspec
def augment(ctx, train):
    """Extra training samples as a `dermbench.data.Split` (same classes and image size as
    `train`), or None. Results of every method are pooled with the real training split."""


@hookspec(firstresult=True)
def fit(ctx, model, train, val):
    """Train `model` on `train` (selecting on `val`) and return the trained model: a torch
    nn.Module, or anything else if the same plugin implements `predict` to use it. None is
    refused (it would let ERM's fit answer under this method's name); an exception other than
    DermbenchError is reported as a PluginError naming the plugin and the hook."""


@hookspec(firstresult=True)
def predict(ctx, model, split):
    """Class probabilities, a float array (n, K), for every sample of `split` (no labels): finite,
    in [0, 1], each row summing to 1, for binary tasks too. None is refused.

    Before training the harness calls `predict` on a few validation samples with the untrained
    model, so a wrong shape fails in seconds. A method whose predict needs a fitted model (e.g.
    its fit returns a different kind of model) opts out with the plugin attribute
    `predict_needs_fit = True`."""
