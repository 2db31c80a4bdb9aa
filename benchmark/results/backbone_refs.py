"""What to cite besides the plugins: dermbench itself, timm, and the paper of each backbone family.

A run's backbone is any timm model name (`model.backbone`), so the table is keyed by the
family's name prefix; a model outside the table is cited through timm alone. Bibliographic
fields come from the reference lists of the method papers in the benchmark (cited in docs/<method>.md);
fields they do not give (DOIs, most pages) are left out rather than guessed.
"""

from __future__ import annotations

from dermbench import __version__

#: dermbench itself; CITATION.cff says the same (tests/test_cite.py checks title and version)
DERMBENCH_TITLE = "dermbench: a benchmark of skin-tone fairness for skin-lesion classifiers"
DERMBENCH = f"""@software{{dermbench,
  author = {{{{dermbench contributors}}}},
  title = {{{DERMBENCH_TITLE}}},
  version = {{{__version__}}},
  year = {{2026}},
  license = {{MIT}},
}}"""

TIMM = """@misc{rw2019timm,
  author = {Wightman, Ross},
  title = {{PyTorch} Image Models},
  year = {2019},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}},
}"""

_RESNET = """@inproceedings{he2016deep,
  author = {He, K. and Zhang, X. and Ren, S. and Sun, J.},
  title = {Deep Residual Learning for Image Recognition},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages = {770--778},
  year = {2016},
}"""

_RESNEXT = """@inproceedings{xie2017aggregated,
  author = {Xie, S. and Girshick, R. and Doll{\\'a}r, P. and Tu, Z. and He, K.},
  title = {Aggregated Residual Transformations for Deep Neural Networks},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages = {1492--1500},
  year = {2017},
}"""

_VGG = """@inproceedings{simonyan2015very,
  author = {Simonyan, K. and Zisserman, A.},
  title = {Very Deep Convolutional Networks for Large-Scale Image Recognition},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2015},
  eprint = {1409.1556},
  archivePrefix = {arXiv},
}"""

_VIT = """@inproceedings{dosovitskiy2021image,
  author = {Dosovitskiy, Alexey and Beyer, Lucas and Kolesnikov, Alexander and Weissenborn, Dirk and Zhai, Xiaohua and Unterthiner, Thomas and Dehghani, Mostafa and Minderer, Matthias and Heigold, Georg and Gelly, Sylvain and Uszkoreit, Jakob and Houlsby, Neil},
  title = {An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2021},
}"""  # noqa: E501 (a BibTeX field stays on one line)

_DENSENET = """@misc{huang2016densely,
  author = {Huang, G. and Liu, Z. and Weinberger, K. Q.},
  title = {Densely Connected Convolutional Networks},
  year = {2016},
  howpublished = {arXiv},
}"""

_EFFICIENTNET = """@misc{tan2019efficientnet,
  author = {Tan, M. and Le, Q. V.},
  title = {{EfficientNet}: Rethinking Model Scaling for Convolutional Neural Networks},
  year = {2019},
  howpublished = {arXiv},
}"""

#: timm model-name prefix -> the family's paper(s); the longest matching prefix wins
BACKBONES: dict[str, tuple[str, ...]] = {
    "resnet": (_RESNET,),
    "resnext": (_RESNEXT,),
    "vgg": (_VGG,),
    "vit_": (_VIT,),
    "densenet": (_DENSENET,),
    "efficientnet": (_EFFICIENTNET,),
    "tf_efficientnet": (_EFFICIENTNET,),
}


def backbone_family(name: str) -> str | None:
    """The BACKBONES prefix that names `name`'s family, or None for a model outside the table."""
    matches = [p for p in BACKBONES if name.startswith(p)]
    return max(matches, key=len) if matches else None


def backbone_references(name: str) -> tuple[str, ...]:
    """The family's paper(s), then timm (every backbone is built by timm)."""
    family = backbone_family(name)
    return (*(BACKBONES[family] if family else ()), TIMM)
