"""The datasets of one run, each built once, and the splits they load."""

from __future__ import annotations

from dermbench.data.model import Split, data_root
from dermbench.errors import DataError
from dermbench.plugins import make_dataset


class DatasetPool:
    """Dataset instances by name, each built once per run."""

    def __init__(self, cfg: dict, local: tuple[str, ...]) -> None:
        self.cfg, self.local, self._made = cfg, local, {}

    def get(self, name: str):
        if name not in self._made:
            data = self.cfg["data"]
            options = {**data["options"], "on_error": data["on_error"]}
            self._made[name] = make_dataset(name, root=data_root(name, data["root"]), options=options, local=self.local)
        return self._made[name]

    def load(self, name: str, split: str, *, image_size: int | None = None, with_masks: bool = False,
             as_name: str | None = None) -> Split:
        """`name`'s `split` at `image_size` px (default: the run's `data.image_size`)."""
        size = int(image_size or self.cfg["data"]["image_size"])
        loaded = self.get(name).load(task=self.cfg["task"], split=split, image_size=size, name=as_name)
        if with_masks and loaded.masks is None:
            raise DataError(f"dataset {name!r} has no lesion masks for split {split!r}")
        return loaded
