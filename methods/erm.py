"""ERM: empirical risk minimisation, the baseline every method is compared with.

It supplies the fallback `fit` and `predict` (trylast), so a method that changes only one
hook (DermDiff only augments; FairQuantize wraps fit) still has the others.
"""

from __future__ import annotations

from dermbench.hookspecs import hookimpl

name = "erm"


@hookimpl
def dermbench_method_defaults(profile: str) -> dict:
    # ERM's settings are the shared `model` and `train` sections of the profile.
    return {}


@hookimpl(trylast=True)
def fit(ctx, model, train, val):
    # a method that edits a trained ERM model (a fit wrapper with `shares_erm = True`) gets the
    # one from the shared cache; trained either way under the same name, it is the same model
    if ctx.share_erm:
        return ctx.pretrained_erm(train, val)  # built from the same initialisation as `model`
    return ctx.train_model(model, train, val, name="erm")


@hookimpl(trylast=True)
def predict(ctx, model, split):
    return ctx.predict_proba(model, split)
