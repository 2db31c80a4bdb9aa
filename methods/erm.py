"""ERM: empirical risk minimisation, the baseline every method is compared with.

It supplies the fallback `fit` and `predict` (trylast), so a method that changes only one
hook (DermDiff only augments; FairQuantize wraps fit) still has the others. Its model comes
from the shared ERM cache: trained by the first run of these settings, seed and data, loaded by
every later one, including the FairPrune, FairQuantize and MFD runs that start from it.
"""

from __future__ import annotations

from dermbench.hookspecs import hookimpl

name = "erm"
#: nothing of its own to cite: a run cites dermbench, its datasets and its backbone
REFERENCES: tuple[str, ...] = ()


@hookimpl
def dermbench_method_defaults(profile: str) -> dict:
    # ERM's settings are the shared `model` and `train` sections of the profile.
    return {}


@hookimpl(trylast=True)
def fit(ctx, model, train, val):
    # the ERM model of these settings, seed and data is trained once and shared through the ERM
    # cache (dermbench.train.pretrained): the ERM baseline and the methods that edit or distil it
    # (FairPrune, FairQuantize, MFD) use the very same model. It is built from the same
    # initialisation as `model`.
    return ctx.pretrained_erm(train, val)


@hookimpl(trylast=True)
def predict(ctx, model, split):
    return ctx.predict_proba(model, split)
