"""What the classifier-side mitigation methods (FairPrune, FairQuantize, MFD) share: the
sensitive groups of the fairness objective and the privileged one (`groups`), second-order
saliency from the GGN diagonal (`curvature`, `saliency`) and weights held at fixed values
through retraining (`frozen`: pruned zeros, quantised values).

The ERM model they start from comes from the shared cache (`dermbench.train.pretrained`,
through `RunContext.pretrained_erm`). Imports the context (for annotations), train, data,
seeds and errors; the method plugins in dermbench.methods import it.
"""
