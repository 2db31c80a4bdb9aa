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

#: what `dermbench_classifier_role` answers when the method's own model replaces the harness's classifier
CLASSIFIER_REPLACED = ""


@hookspec
def dermbench_method_defaults(profile: str, dataset: str) -> dict:
    """The method's settings for `profile` ("tiny" or "paper") on training dataset `dataset`, as
    a nested dict merged into the run config (an implementation may take `profile` alone: a
    paper's protocol can differ per dataset, e.g. FairQuantize on Fitzpatrick17k and ISIC 2019). A
    method's own hyperparameters go under a key with its name, e.g. {"fairquantize": {"beta": 1.0}};
    it may also set shared sections such as "train"."""


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


@hookspec
def dermbench_check_settings(config: dict, fetch: bool) -> list[dict] | None:
    """Check the method's settings in the resolved run `config` (its own section, `config[name]`)
    and the prerequisites of its profile, before any data loads or anything trains: raise a
    `dermbench.errors.ConfigError` naming the setting and the allowed values (or a DermbenchError
    naming the command that provides an absent prerequisite, e.g. a model download). The harness
    calls it in `dermbench run`, `--dry-run` and sweeps, so a bad setting stops a run in a second.

    Returns None or a list of what the run will load, one dict per model or weights file, with
    `setting`, `source` and `status` (e.g. "in the local Hugging Face cache at ..."), which
    `--dry-run` prints. `fetch` is False under `--dry-run`: look only at local files and caches
    (never the network) and report an absent prerequisite instead of raising (`"missing": True`
    and the command in `status`; a bad setting still raises); True in a real run, where an absent
    prerequisite raises and an absent hub model may be checked for reachability (an
    implementation may take `config` alone)."""


@hookspec
def dermbench_add_commands(subparsers) -> None:
    """Add the method's own `dermbench` commands: call `subparsers.add_parser(NAME, help=...)` (an
    argparse sub-parsers object) for each, and give every parser a `func(args) -> int` default,
    as the built-in commands do (e.g. the fedd plugin adds `dermbench fedd curve|ablate|convert-adm`).
    Every implementation is called (not firstresult); what it returns is ignored.

    The CLI asks for plugin commands only when the command word is not a built-in command: first
    the method named like the word (so `dermbench fedd ...` imports FEDD alone), then, when that
    one adds no such command, every other installed method. A command named like a built-in one is
    never reached (the built-in answers first); a method that cannot be imported adds nothing.
    `dermbench --help` imports no plugin, so it names plugin commands in one generic line."""


@hookspec
def dermbench_models(config: dict, num_classes: int, note: str) -> list | None:
    """The models the method itself builds in a run of the resolved `config`, for `dermbench run
    --dry-run`: a list of `dermbench.train.meta_models.BuiltModel` rows, each built on torch's meta
    device (`meta_models.built`; the diffusion parts with `dermbench.diffusion.architectures`), so
    nothing is read, downloaded or allocated. `num_classes` is the task's class count (2 when the data
    decides it, and `note` then says so: give it to the rows whose head depends on it). The harness
    lists its classifier first (see `dermbench_classifier_role`), then every method's rows in the
    order the methods were registered (ERM first, then as `--method` names them); a method that
    builds nothing of its own does not implement it (an implementation may take `config` alone)."""


@hookspec
def dermbench_classifier_role(config: dict) -> str | None:
    """What the harness's classifier (`model.backbone`) is in a run of the resolved `config` under
    this method, as `dermbench run --dry-run` lists it: None (or no implementation) keeps the role
    "classifier"; a label renames it (MFD: "classifier (MFD's teacher)"); `CLASSIFIER_REPLACED` says
    the method's own model, listed by its `dermbench_models`, replaces it (FEDD's probe,
    Class-N-Diff's latent classifier with `classifier: latent`), so no classifier row is listed. A
    replacement wins over a label; of several labels, the first registered method's is shown."""
