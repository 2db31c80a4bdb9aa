"""Fixtures that build fake copies of the real datasets in their published on-disk layouts.

No real image can be downloaded in tests, so each builder writes the release's files with
the exact names, CSV headers, value spellings, folder layout and known quirks
(Fitzpatrick17k's fitzpatrick_scale -1, DDI's leading unnamed index column and RGBA PNGs,
Derm7pt's file names whose letter case differs from meta.csv, ISIC 2019's "_downsampled"
names), with tiny generated images. Every builder is deterministic: the same arguments give
the same files, so tests can assert exact counts.

Fixtures are factories (call them with arguments); each returns a `FakeTree`:

    make_fitz17k(n=54, n_unknown=3, missing=0, truncated=0, size=8)
    make_ddi(n=12, spellings=False)      make_derm7pt(n=20)
    make_mclass(n=10, melanomas=2)       make_isic2018(n=14, in_folder=False)
    make_isic2019(n=48)                  make_pad_ufes(n=24)
    make_data_home(n_fitz=300, include=("ddi", "derm7pt"))  -> Path of a DERMBENCH_DATA folder
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

import dermbench.data.splits as splits_module

#: a skin colour per Fitzpatrick type (grey for unknown), so images differ by tone
FST_RGB = {
    1: (241, 194, 167),
    2: (224, 172, 138),
    3: (198, 134, 94),
    4: (161, 102, 64),
    5: (112, 65, 36),
    6: (70, 40, 25),
    -1: (128, 128, 128),
}
FITZ_COLUMNS = [
    "md5hash",
    "fitzpatrick_scale",
    "fitzpatrick_centaur",
    "label",
    "nine_partition_label",
    "three_partition_label",
    "qc",
    "url",
    "url_alphanum",
]
FITZ_PARTITIONS = ("non-neoplastic", "benign", "malignant")
#: (label, nine_partition_label) per three_partition_label, two conditions each
FITZ_CONDITIONS = {
    "non-neoplastic": [("psoriasis", "inflammatory"), ("acne vulgaris", "inflammatory")],
    "benign": [("seborrheic keratosis", "benign epidermal"), ("dermatofibroma", "benign dermal")],
    "malignant": [("basal cell carcinoma", "malignant epidermal"), ("melanoma", "malignant melanoma")],
}
DERM7PT_COLUMNS = [
    "case_num",
    "diagnosis",
    "seven_point_score",
    "pigment_network",
    "streaks",
    "pigmentation",
    "regression_structures",
    "dots_and_globules",
    "blue_whitish_veil",
    "vascular_structures",
    "level_of_diagnostic_difficulty",
    "elevation",
    "location",
    "sex",
    "management",
    "clinic",
    "derm",
    "case_id",
    "notes",
]
DERM7PT_DIAGNOSES = [
    "basal cell carcinoma",
    "blue nevus",
    "clark nevus",
    "melanoma",
    "melanoma (in situ)",
    "melanoma (less than 0.76 mm)",
    "seborrheic keratosis",
    "reed or spitz nevus",
    "dermal nevus",
    "melanoma metastasis",
]
ISIC2018_CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
ISIC2019_CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
PAD_COLUMNS = [
    "patient_id",
    "lesion_id",
    "smoke",
    "drink",
    "background_father",
    "background_mother",
    "age",
    "pesticide",
    "gender",
    "skin_cancer_history",
    "cancer_history",
    "has_piped_water",
    "has_sewage_system",
    "fitspatrick",
    "region",
    "diameter_1",
    "diameter_2",
    "diagnostic",
    "itch",
    "grew",
    "hurt",
    "changed",
    "bleed",
    "elevation",
    "img_id",
    "biopsed",
]
PAD_DIAGNOSES = ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]


@dataclass
class FakeTree:
    """A generated dataset folder: its root, the rows written, and what was left broken on purpose."""

    root: Path
    meta: pd.DataFrame
    missing: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    case_mismatched: list[str] = field(default_factory=list)


def write_image(
    path: Path, rgb: tuple[int, int, int], *, size: int = 8, mode: str = "RGB", height: int | None = None
):
    """A tiny solid image with a darker centre 'lesion' (format from the extension, any case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size, height or size
    if mode == "RGBA":
        image = Image.new("RGBA", (width, height), (*rgb, 255))
        image.putpixel((0, 0), (*rgb, 0))  # a transparent corner, as some DDI PNGs have
    else:
        image = Image.new("RGB", (width, height), rgb)
    dark = tuple(max(0, c - 90) for c in rgb)
    for x in range(width // 3, 2 * width // 3 + 1):
        for y in range(height // 3, 2 * height // 3 + 1):
            image.putpixel((x, y), (*dark, 255) if mode == "RGBA" else dark)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    image.save(path, format=fmt)


def truncate_file(path: Path) -> None:
    """Cut a file to half its bytes (a download that stopped early)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ----- Fitzpatrick17k -------------------------------------------------------------------------


def build_fitz17k(
    root: Path,
    *,
    n: int = 54,
    n_unknown: int = 3,
    missing: int = 0,
    truncated: int = 0,
    size: int = 8,
    seed: int = 0,
) -> FakeTree:
    """fitzpatrick17k.csv + images/<md5hash>.jpg.

    Row i < n is cell i % 18 of three_partition_label x FST 1-6 (partition = cell % 3,
    FST = cell // 3 + 1), with condition (i // 18) % 2 of its partition; then `n_unknown`
    rows with fitzpatrick_scale -1 cycling through the partitions. The last `missing` rows
    get no image and the `truncated` rows before them a half-written JPEG.
    """
    rows = []
    for i in range(n + n_unknown):
        if i < n:
            cell = i % 18
            partition, fst = FITZ_PARTITIONS[cell % 3], cell // 3 + 1
            label, nine = FITZ_CONDITIONS[partition][(i // 18) % 2]
        else:
            partition, fst = FITZ_PARTITIONS[(i - n) % 3], -1
            label, nine = FITZ_CONDITIONS[partition][0]
        md5 = hashlib.md5(f"fitz17k-{seed}-{i}".encode()).hexdigest()
        if i % 2:
            slug = label.replace(" ", "-")
            url = f"https://www.dermaamin.com/site/images/clinical-pic/{label[0]}/{slug}/{slug}{i}.jpg"
        else:
            url = f"http://atlasdermatologico.com.br/img?imageId={1000 + i}"
        centaur = -1 if fst == -1 else (fst if i % 5 else min(6, fst + 1))
        qc = "1 Diagnostic" if i % 10 == 0 else ("3 Wrongly labelled" if i % 25 == 7 else "")
        rows.append(
            {
                "md5hash": md5,
                "fitzpatrick_scale": fst,
                "fitzpatrick_centaur": centaur,
                "label": label,
                "nine_partition_label": nine,
                "three_partition_label": partition,
                "qc": qc,
                "url": url,
                "url_alphanum": re.sub(r"[^0-9A-Za-z]", "", url),
            }
        )
    meta = pd.DataFrame(rows, columns=FITZ_COLUMNS)
    root.mkdir(parents=True, exist_ok=True)
    meta.to_csv(root / "fitzpatrick17k.csv", index=False)
    total = len(meta)
    missing_ids = meta["md5hash"].iloc[total - missing :].tolist() if missing else []
    truncated_ids = (
        meta["md5hash"].iloc[total - missing - truncated : total - missing].tolist() if truncated else []
    )
    for row in meta.itertuples():
        if row.md5hash in missing_ids:
            continue
        path = root / "images" / f"{row.md5hash}.jpg"
        write_image(path, FST_RGB[row.fitzpatrick_scale], size=size)
        if row.md5hash in truncated_ids:
            truncate_file(path)
    return FakeTree(root, meta, missing=missing_ids, truncated=truncated_ids)


# ----- DDI ------------------------------------------------------------------------------------


def build_ddi(root: Path, *, n: int = 12, spellings: bool = False) -> FakeTree:
    """ddi_metadata.csv (leading unnamed index column) + 000001.png, ... beside it.

    skin_tone cycles 12, 34, 56; row i is malignant when i % 4 == 0. Every third image is
    RGBA and image 2 is larger and not square. With `spellings`, malignant uses mixed
    spellings (true/1/yes/FALSE/0/no) instead of the release's True/False.
    """
    malignant_diseases = ["melanoma-in-situ", "basal-cell-carcinoma", "squamous-cell-carcinoma-in-situ"]
    benign_diseases = [
        "seborrheic-keratosis-irritated",
        "verruca-vulgaris",
        "melanocytic-nevi",
        "epidermal-cyst",
    ]
    true_words, false_words = ["true", "1", "yes", "TRUE"], ["FALSE", "0", "no", "false"]
    rows = []
    for i in range(n):
        malignant = i % 4 == 0
        if spellings:
            word = (true_words if malignant else false_words)[(i // 4 + i) % 4]
        else:
            word = "True" if malignant else "False"
        disease = malignant_diseases[i % 3] if malignant else benign_diseases[i % 4]
        rows.append(
            {
                "DDI_ID": i + 1,
                "DDI_file": f"{i + 1:06d}.png",
                "skin_tone": (12, 34, 56)[i % 3],
                "malignant": word,
                "disease": disease,
            }
        )
    meta = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    meta.to_csv(root / "ddi_metadata.csv")  # index=True: the release's leading unnamed column
    colour = {12: FST_RGB[1], 34: FST_RGB[3], 56: FST_RGB[6]}
    for i, row in enumerate(meta.itertuples()):
        mode = "RGBA" if i % 3 == 1 else "RGB"
        size, height = (40, 24) if i == 2 else (8, None)
        write_image(root / row.DDI_file, colour[row.skin_tone], size=size, height=height, mode=mode)
    return FakeTree(root, meta)


# ----- Derm7pt --------------------------------------------------------------------------------


def build_derm7pt(root: Path, *, n: int = 20) -> FakeTree:
    """release_v0 layout: meta/meta.csv, meta/{train,valid,test}_indexes.csv, images/<folder>/<file>.

    Diagnoses cycle through DERM7PT_DIAGNOSES (half are malignant: BCC and melanoma variants).
    Splits: rows 0..n/2-1 train, the next n/5 valid, the rest test (index files list them in
    a shuffled order). Case quirk: meta.csv names case 0's clinic and derm images and case
    1's clinic image in upper case (e.g. "NEL/NEL002.JPG") while the files on disk are
    "NEL/Nel002.jpg".
    """
    folders = ["NEL", "FAL", "NML"]
    rows, mismatched = [], []
    for i in range(n):
        folder = folders[i % 3]
        paths = {}
        for kind, number in (("clinic", 2 * i), ("derm", 2 * i + 1)):
            disk = f"{folder}/{folder.title()}{number:03d}.jpg"
            listed = disk
            if (i == 0) or (i == 1 and kind == "clinic"):
                listed = f"{folder}/{folder}{number:03d}.JPG"
                mismatched.append(listed)
            paths[kind] = (listed, disk)
        diagnosis = DERM7PT_DIAGNOSES[i % len(DERM7PT_DIAGNOSES)]
        rows.append(
            {
                "case_num": i + 1,
                "diagnosis": diagnosis,
                "seven_point_score": i % 5,
                "pigment_network": ["absent", "typical", "atypical"][i % 3],
                "streaks": ["absent", "regular", "irregular"][i % 3],
                "pigmentation": ["absent", "diffuse regular", "localized irregular"][i % 3],
                "regression_structures": ["absent", "blue areas", "combinations"][i % 3],
                "dots_and_globules": ["absent", "regular", "irregular"][i % 3],
                "blue_whitish_veil": ["absent", "present"][i % 2],
                "vascular_structures": ["absent", "arborizing", "dotted"][i % 3],
                "level_of_diagnostic_difficulty": ["low", "medium", "high"][i % 3],
                "elevation": ["flat", "palpable", "nodular"][i % 3],
                "location": ["back", "lower limbs", "head neck", "abdomen"][i % 4],
                "sex": ["female", "male"][i % 2],
                "management": ["excision", "clinical follow up", "no further examination"][i % 3],
                "clinic": paths["clinic"][0],
                "derm": paths["derm"][0],
                "case_id": "",
                "notes": "",
                "_disk_clinic": paths["clinic"][1],
                "_disk_derm": paths["derm"][1],
            }
        )
    meta = pd.DataFrame(rows)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    meta[DERM7PT_COLUMNS].to_csv(root / "meta" / "meta.csv", index=False)
    n_train, n_valid = n // 2, n // 5
    splits = {
        "train": list(range(n_train)),
        "valid": list(range(n_train, n_train + n_valid)),
        "test": list(range(n_train + n_valid, n)),
    }
    for name, indexes in splits.items():
        shuffled = indexes[1::2] + indexes[0::2]
        pd.DataFrame({"indexes": shuffled}).to_csv(root / "meta" / f"{name}_indexes.csv", index=False)
    for i, (clinic, derm) in enumerate(zip(meta["_disk_clinic"], meta["_disk_derm"])):
        write_image(root / "images" / clinic, FST_RGB[1 + i % 3])
        write_image(root / "images" / derm, FST_RGB[2 + i % 3])
    meta = meta.drop(columns=["_disk_clinic", "_disk_derm"])
    return FakeTree(root, meta, case_mismatched=mismatched)


# ----- MClass ---------------------------------------------------------------------------------


def build_mclass(root: Path, *, n: int = 10, melanomas: int = 2) -> FakeTree:
    """MClassD/ and MClassND/, each with labels.csv (image,label) and `n` images, the first
    `melanomas` of them melanoma."""
    frames = []
    for folder, prefix in (("MClassD", "D"), ("MClassND", "ND")):
        rows = [
            {"image": f"MClass{prefix}_{i + 1:03d}.jpg", "label": "melanoma" if i < melanomas else "nevus"}
            for i in range(n)
        ]
        frame = pd.DataFrame(rows)
        (root / folder).mkdir(parents=True, exist_ok=True)
        frame.to_csv(root / folder / "labels.csv", index=False)
        for i, row in enumerate(frame.itertuples()):
            write_image(root / folder / row.image, FST_RGB[1 + i % 6])
        frames.append(frame.assign(folder=folder))
    return FakeTree(root, pd.concat(frames, ignore_index=True))


# ----- ISIC -----------------------------------------------------------------------------------


def _one_hot(diagnosis: str, classes: list[str]) -> dict[str, str]:
    return {c: "1.0" if c == diagnosis else "0.0" for c in classes}


def build_isic2018(root: Path, *, n: int = 14, in_folder: bool = False) -> FakeTree:
    """ISIC2018_Task3_Test_GroundTruth.csv (at the root, or in its unzipped folder) and
    ISIC2018_Task3_Test_Input/ISIC_00345xx.jpg plus the archive's ATTRIBUTION.txt/LICENSE.txt.
    Diagnoses cycle through the 7 classes."""
    rows = []
    for i in range(n):
        rows.append({"image": f"ISIC_{34524 + i:07d}", **_one_hot(ISIC2018_CLASSES[i % 7], ISIC2018_CLASSES)})
    meta = pd.DataFrame(rows, columns=["image", *ISIC2018_CLASSES])
    folder = root / "ISIC2018_Task3_Test_GroundTruth" if in_folder else root
    folder.mkdir(parents=True, exist_ok=True)
    meta.to_csv(folder / "ISIC2018_Task3_Test_GroundTruth.csv", index=False)
    images = root / "ISIC2018_Task3_Test_Input"
    for i, row in enumerate(meta.itertuples()):
        write_image(images / f"{row.image}.jpg", FST_RGB[1 + i % 6])
    (images / "ATTRIBUTION.txt").write_text("attribution\n")
    (images / "LICENSE.txt").write_text("CC-BY-NC\n")
    return FakeTree(root, meta)


def build_isic2019(root: Path, *, n: int = 48) -> FakeTree:
    """ISIC_2019_Training_GroundTruth.csv, ISIC_2019_Training_Metadata.csv and
    ISIC_2019_Training_Input/. Pairs of rows share a lesion_id and a diagnosis (diagnosis
    (i // 2) % 8); every 4th image is named "..._downsampled"; sex cycles female, male, "";
    every 5th lesion_id is empty (as for some archive sources)."""
    gt, meta_rows = [], []
    sites = ["anterior torso", "upper extremity", "posterior torso", "lower extremity", "head/neck", ""]
    for i in range(n):
        image = f"ISIC_{i:07d}" + ("_downsampled" if i % 4 == 3 else "")
        gt.append(
            {"image": image, **_one_hot(ISIC2019_CLASSES[(i // 2) % 8], ISIC2019_CLASSES), "UNK": "0.0"}
        )
        lesion = "" if (i // 2) % 5 == 4 else f"{'BCN' if i % 3 else 'HAM'}_{i // 2:07d}"
        meta_rows.append(
            {
                "image": image,
                "age_approx": "" if i % 7 == 6 else f"{30 + 5 * (i % 9)}.0",
                "anatom_site_general": sites[i % len(sites)],
                "lesion_id": lesion,
                "sex": ["female", "male", ""][i % 3],
            }
        )
    frame = pd.DataFrame(gt, columns=["image", *ISIC2019_CLASSES, "UNK"])
    root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    pd.DataFrame(meta_rows).to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    for i, row in enumerate(frame.itertuples()):
        write_image(root / "ISIC_2019_Training_Input" / f"{row.image}.jpg", FST_RGB[1 + i % 6])
    return FakeTree(root, frame.merge(pd.DataFrame(meta_rows), on="image"))


# ----- PAD-UFES-20 ----------------------------------------------------------------------------


def build_pad_ufes(root: Path, *, n: int = 24) -> FakeTree:
    """metadata.csv (real header, `fitspatrick` sic) and images/imgs_part_{1,2}/PAT_x_y_z.png.
    Diagnoses cycle through the six codes; patient i // 2 has two images; fitspatrick is
    "1.0".."6.0", empty every 6th row; gender FEMALE/MALE/empty."""
    rows = []
    for i in range(n):
        patient, lesion = f"PAT_{100 + i // 2}", 1000 + i
        blank = i % 6 == 5
        rows.append(
            {
                "patient_id": patient,
                "lesion_id": lesion,
                "smoke": "" if blank else "False",
                "drink": "" if blank else "False",
                "background_father": "" if blank else "POMERANIA",
                "background_mother": "" if blank else "POMERANIA",
                "age": 40 + i,
                "pesticide": "" if blank else "False",
                "gender": "" if blank else ["FEMALE", "MALE"][i % 2],
                "skin_cancer_history": "" if blank else "True",
                "cancer_history": "" if blank else "False",
                "has_piped_water": "" if blank else "True",
                "has_sewage_system": "" if blank else "True",
                "fitspatrick": "" if blank else f"{1 + i % 6}.0",
                "region": ["FACE", "ARM", "NECK", "BACK"][i % 4],
                "diameter_1": "" if blank else "6.0",
                "diameter_2": "" if blank else "5.0",
                "diagnostic": PAD_DIAGNOSES[i % 6],
                "itch": "False",
                "grew": "UNK",
                "hurt": "False",
                "changed": "UNK",
                "bleed": "False",
                "elevation": "True",
                "img_id": f"{patient}_{lesion}_{500 + i}.png",
                "biopsed": "True" if i % 6 != 3 else "False",
            }
        )
    meta = pd.DataFrame(rows, columns=PAD_COLUMNS)
    root.mkdir(parents=True, exist_ok=True)
    meta.to_csv(root / "metadata.csv", index=False)
    for i, row in enumerate(meta.itertuples()):
        part = "imgs_part_1" if i % 2 == 0 else "imgs_part_2"
        write_image(root / "images" / part / row.img_id, FST_RGB[1 + i % 6])
    return FakeTree(root, meta)


# ----- fixtures -------------------------------------------------------------------------------


def _factory(tmp_path: Path, default: str, build):
    def make(root: Path | None = None, **kwargs) -> FakeTree:
        return build(Path(root) if root is not None else tmp_path / default, **kwargs)

    return make


@pytest.fixture
def make_fitz17k(tmp_path):
    """Factory: make_fitz17k(root=None, n=54, n_unknown=3, missing=0, truncated=0, size=8, seed=0)."""
    return _factory(tmp_path, "fitz17k", build_fitz17k)


@pytest.fixture
def make_ddi(tmp_path):
    """Factory: make_ddi(root=None, n=12, spellings=False)."""
    return _factory(tmp_path, "ddi", build_ddi)


@pytest.fixture
def make_derm7pt(tmp_path):
    """Factory: make_derm7pt(root=None, n=20)."""
    return _factory(tmp_path, "derm7pt", build_derm7pt)


@pytest.fixture
def make_mclass(tmp_path):
    """Factory: make_mclass(root=None, n=10, melanomas=2)."""
    return _factory(tmp_path, "mclass", build_mclass)


@pytest.fixture
def make_isic2018(tmp_path):
    """Factory: make_isic2018(root=None, n=14, in_folder=False)."""
    return _factory(tmp_path, "isic2018", build_isic2018)


@pytest.fixture
def make_isic2019(tmp_path):
    """Factory: make_isic2019(root=None, n=48)."""
    return _factory(tmp_path, "isic2019", build_isic2019)


@pytest.fixture
def make_pad_ufes(tmp_path):
    """Factory: make_pad_ufes(root=None, n=24)."""
    return _factory(tmp_path, "pad-ufes-20", build_pad_ufes)


@pytest.fixture
def make_data_home(tmp_path):
    """Factory: a DERMBENCH_DATA folder with fitz17k/ (n_fitz rows, all six FST and both
    malignant labels in every split of the standard rule for n_fitz >= ~150) and the
    datasets in `include` beside it (ddi, derm7pt, mclass, isic2018, isic2019, pad-ufes-20).

    make_data_home(n_fitz=300, include=("ddi", "derm7pt"), size=8) -> Path
    """
    builders = {
        "ddi": build_ddi,
        "derm7pt": build_derm7pt,
        "mclass": build_mclass,
        "isic2018": build_isic2018,
        "isic2019": build_isic2019,
        "pad-ufes-20": build_pad_ufes,
    }

    def make(n_fitz: int = 300, include: tuple[str, ...] = ("ddi", "derm7pt"), size: int = 8) -> Path:
        base = tmp_path / "dermbench-data"
        build_fitz17k(base / "fitz17k", n=n_fitz, size=size)
        for name in include:
            if name not in builders:
                raise ValueError(f"make_data_home: unknown dataset {name!r}; known: {', '.join(builders)}")
            builders[name](base / name)
        return base

    return make


@pytest.fixture(autouse=True)
def private_cache_root(tmp_path, monkeypatch):
    """Caches that outlive a run (decoded images, trained ERM models) go to a folder of this test,
    never the user's ~/.cache: no test finds another's entries (an ERM model another test trained
    would skip the training a test is about)."""
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "dermbench-cache"))


@pytest.fixture(autouse=True)
def no_committed_splits(tmp_path, monkeypatch):
    """Generated trees never match the committed split files (made from the real metadata, whose
    checksum they carry), so tests see none; tests of the committed files ask for them explicitly."""
    monkeypatch.setattr(splits_module, "committed_dir", lambda: tmp_path / "no-committed-splits")


@pytest.fixture(autouse=True)
def offline_model_hubs(monkeypatch):
    """Tests never reach a model hub: huggingface_hub and transformers answer from local files only."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on one torch thread: torch's spinning thread pool on a busy machine makes
    sub-second work take seconds, and a benchmark module's numbers are comparable run to run.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
