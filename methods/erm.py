"""ERM: empirical risk minimisation, the baseline every method is compared with.

It supplies the fallback `fit` and `predict` (trylast), so a method that changes only one
hook (DermDiff only augments; FairQuantize wraps fit) still has the others. Its model comes
from the shared ERM cache: trained by the first run of these settings, seed and data, loaded by
every later one, including the FairPrune, FairQuantize and MFD runs that start from it.
"""

from __future__ import annotations

from dermbench.hookspecs import hookimpl

name = "erm"
#: empirical risk minimisation itself (Vapnik); the backbone's paper (e.g. ResNet, He et al. 2016) is
#: cited through the run's backbone references, dermbench and the datasets through theirs
REFERENCES: tuple[str, ...] = (
    r"""@inproceedings{vapnik1992principles,
  author = {Vapnik, V.},
  title = {Principles of Risk Minimization for Learning Theory},
  booktitle = {Advances in Neural Information Processing Systems 4 (NIPS 1991)},
  pages = {831--838},
  year = {1992},
}""",
    r"""@book{vapnik1998statistical,
  author = {Vapnik, V. N.},
  title = {Statistical Learning Theory},
  publisher = {Wiley},
  address = {New York},
  year = {1998},
}""",
)


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
