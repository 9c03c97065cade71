"""Dataset adapters: turn a dataset root in its published layout into labelled records; seeded split helpers.

Every adapter returns ``(records, problems)``. ``problems`` lists ``(path, reason)`` for single entries that could
not be used (a badly named file, a list line naming a missing image...); an adapter never raises for one bad entry,
only ``DatasetLayoutError`` when the root is not in its layout at all (no usable entry is found). Images are not
opened here: decoding happens in the preprocessing step, so an unreadable image is not reported by this module.
"""

from __future__ import annotations

import csv
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

# Our convention: 1 = male, the paper's binary cross-entropy label.
GENDER_FEMALE, GENDER_MALE, GENDER_UNKNOWN = 0, 1, -1

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
_LISTED_ENTRIES = 8  # how many top-level entries a layout error shows


AGE_UNKNOWN = math.nan  # faces with a gender label and no age (CelebA): distillation teachers give them one


@dataclass(frozen=True)
class Record:
    path: str  # absolute image path
    age: float  # years; AGE_UNKNOWN (NaN) where the dataset has none
    gender: int  # GENDER_*
    subject: str  # person id; the file stem where the dataset has no ids (subject splits then act per image)
    split: str = ""  # official split ("train", "val", "test") where the dataset defines one
    # Where the dataset labels an age group instead of a year (FairFace's "20-29", "more than 70"): the ages it
    # covers, [low, high) in years, high = inf for an open-ended group; `age` is then the group's representative age
    # (its middle; low + 5 for open-ended), for summaries and sampling only. None where the label is a year.
    age_range: tuple[float, float] | None = None
    race: str = ""  # the dataset's race label where it has one (FairFace), for per-race reports


Problem = tuple[str, str]
LoadResult = tuple[list[Record], list[Problem]]


class DatasetLayoutError(ValueError):
    """The root folder is not in the layout the adapter expects."""


def _layout_error(root: Path, expected: str) -> DatasetLayoutError:
    if not root.exists():
        found = "no such folder"
    elif not root.is_dir():
        found = "a file, not a folder"
    else:
        entries = sorted(root.iterdir())
        shown = [entry.name + ("/" if entry.is_dir() else "") for entry in entries[:_LISTED_ENTRIES]]
        found = ", ".join(shown) if shown else "an empty folder"
        if len(entries) > _LISTED_ENTRIES:
            found += f", ... ({len(entries)} entries)"
    return DatasetLayoutError(f"{root}: expected {expected}; found {found}")


def _absolute(root: str | os.PathLike) -> Path:
    # absolute() rather than resolve(): keep the user's symlinked dataset paths as given.
    return Path(root).expanduser().absolute()


def _files(folder: Path, max_depth: int | None, wanted: Callable[[str], bool]) -> list[Path]:
    """Files in folder and up to max_depth levels below it (None: any depth) whose name is wanted, sorted.

    Hidden entries are skipped (macOS ``._*`` and ``.DS_Store`` litter unpacked archives)."""
    found: list[Path] = []
    for dir_path, dir_names, file_names in os.walk(folder):
        depth = len(Path(dir_path).relative_to(folder).parts)
        go_deeper = max_depth is None or depth < max_depth
        dir_names[:] = sorted(name for name in dir_names if not name.startswith(".")) if go_deeper else []
        found.extend(Path(dir_path, name) for name in file_names if not name.startswith(".") and wanted(name))
    return sorted(found)


def _is_image(file_name: str) -> bool:
    return Path(file_name).suffix.lower() in IMAGE_SUFFIXES


def _image_files(folder: Path, max_depth: int | None = 0) -> list[Path]:
    return _files(folder, max_depth, _is_image)


def _child(folder: Path, *names: str, want_dir: bool = True) -> Path | None:
    """The first of names that exists in folder (as a folder, or a file when not want_dir), matched
    case-insensitively because releases differ in capitalisation."""
    if not folder.is_dir():
        return None
    by_lower_name = {entry.name.lower(): entry for entry in folder.iterdir()}
    for name in names:
        entry = by_lower_name.get(name.lower())
        if entry is not None and (entry.is_dir() if want_dir else entry.is_file()):
            return entry
    return None


def _read_lines(path: Path) -> list[str]:
    """Stripped lines without the trailing blank ones (list files often end in extra newlines)."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _parse_number(text: str | None) -> float | None:
    try:
        number = float(text) if text is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


# --- All-Age-Faces -----------------------------------------------------------------------------------------------

AAF_IMAGE_FOLDERS = ("aglined faces", "aligned faces", "original images")  # "aglined" is the release's spelling
AAF_NAME = re.compile(r"(\d{5})A(\d{2})", re.IGNORECASE)  # serial, "A", age
AAF_LAST_FEMALE_SERIAL, AAF_LAST_SERIAL = 7380, 13321
AAF_LAYOUT = (
    "the All-Age-Faces layout: 'aglined faces/' (or 'aligned faces/', 'original images/') holding NNNNNAYY.jpg "
    "files, with 'image sets/train.txt' and 'val.txt'"
)


def _aaf_gender_from_serial(serial: int) -> int:
    if serial <= AAF_LAST_FEMALE_SERIAL:
        return GENDER_FEMALE
    return GENDER_MALE if serial <= AAF_LAST_SERIAL else GENDER_UNKNOWN


def _read_aaf_image_sets(root: Path, image_names: set[str], problems: list[Problem]) -> dict[str, tuple[str, int]]:
    """File name -> (split, gender from the list line, GENDER_UNKNOWN when the line has none)."""
    listed: dict[str, tuple[str, int]] = {}
    sets_dir = _child(root, "image sets", "image_sets", "imagesets")
    for split in ("train", "val"):
        list_path = _child(sets_dir, f"{split}.txt", want_dir=False) if sets_dir else None
        if list_path is None:
            continue
        for line_no, line in enumerate(_read_lines(list_path), 1):
            fields = line.split()
            if not fields:
                continue
            where, name = f"{list_path}:{line_no}", PurePosixPath(fields[0]).name
            if name not in image_names:
                problems.append((where, f"lists {name}, which is not among the images"))
            elif name in listed:
                problems.append((where, f"{name} is already listed for {listed[name][0]}"))
            elif len(fields) > 1 and fields[1] not in ("0", "1"):
                problems.append((where, f"gender {fields[1]!r} is not 0 (female) or 1 (male)"))
            else:
                # AAF's list labels (0 female, 1 male) are our convention already.
                listed[name] = (split, int(fields[1]) if len(fields) > 1 else GENDER_UNKNOWN)
    return listed


def load_aaf(root: Path) -> LoadResult:
    image_dir = _child(root, *AAF_IMAGE_FOLDERS)
    if image_dir is None:
        raise _layout_error(root, AAF_LAYOUT)
    images = _image_files(image_dir)
    problems: list[Problem] = []
    listed = _read_aaf_image_sets(root, {path.name for path in images}, problems)
    records = []
    for path in images:
        match = AAF_NAME.fullmatch(path.stem)
        if match is None:
            problems.append((str(path), "name is not NNNNNAYY.jpg (5-digit serial, 'A', 2-digit age)"))
            continue
        serial, age = int(match[1]), float(match[2])
        split, gender = listed.get(path.name, ("", GENDER_UNKNOWN))
        if gender == GENDER_UNKNOWN:
            gender = _aaf_gender_from_serial(serial)
        records.append(Record(str(path), age, gender, subject=path.stem, split=split))
    if not records:
        raise _layout_error(root, AAF_LAYOUT)
    return records, problems


# --- UTKFace -----------------------------------------------------------------------------------------------------

UTK_GENDERS = {"0": GENDER_MALE, "1": GENDER_FEMALE}  # UTKFace: 0 = male, 1 = female
UTK_SEARCH_DEPTH = 2  # ROOT, ROOT/UTKFace/, ROOT/utkface_aligned_cropped/crop_part1/ ...
UTK_LAYOUT = (
    "the UTKFace layout: AGE_GENDER_RACE_DATETIME.jpg[.chip.jpg] files in ROOT or up to two folder levels "
    "below it (crop_part1/, UTKFace/ ...)"
)


def _utk_name_stem(file_name: str) -> str:
    return file_name.split(".")[0]  # "25_0_1_2017.jpg.chip.jpg" -> "25_0_1_2017"


def _parse_utk_name(file_name: str) -> tuple[float, int] | None:
    """(age, gender) from AGE_GENDER_RACE_DATETIME; None when it is not such a name."""
    fields = _utk_name_stem(file_name).split("_")
    if len(fields) < 2 or not all(field.isdigit() for field in fields):
        return None
    # A name missing a field (AGE_X_DATETIME) does not say whether X is the gender or the race, so the gender
    # is unknown rather than guessed.
    gender = UTK_GENDERS.get(fields[1], GENDER_UNKNOWN) if len(fields) == 4 else GENDER_UNKNOWN
    return float(fields[0]), gender


def load_utkface(root: Path) -> LoadResult:
    if not root.is_dir():
        raise _layout_error(root, UTK_LAYOUT)
    records, problems = [], []
    for path in _image_files(root, UTK_SEARCH_DEPTH):
        parsed = _parse_utk_name(path.name)
        if parsed is None:
            problems.append((str(path), "name is not AGE_GENDER_RACE_DATETIME.jpg with numeric fields"))
            continue
        age, gender = parsed
        # The name without its .jpg.chip.jpg tail: the same photo in two UTK variants then shares a subject.
        records.append(Record(str(path), age, gender, subject=_utk_name_stem(path.name)))
    if not records:
        raise _layout_error(root, UTK_LAYOUT)
    return records, problems


# --- MORPH-II ----------------------------------------------------------------------------------------------------

MORPH_NAME = re.compile(r"(\d+)_(\d+)([MF])(\d+)", re.IGNORECASE)  # subject _ picture gender age
MORPH_GENDERS = {"M": GENDER_MALE, "MALE": GENDER_MALE, "F": GENDER_FEMALE, "FEMALE": GENDER_FEMALE}
MORPH_CSV_SEARCH_DEPTH = 2
# Header spellings differ between releases; matched after _normalise_header.
MORPH_CSV_COLUMNS = {
    "path": ("photo", "path", "file", "filename", "file_name", "image", "image_path", "img"),
    "age": ("age",),
    "gender": ("gender", "sex"),
    "subject": ("id_num", "idnum", "id", "subject", "subject_id", "person_id"),
}
MORPH_LAYOUT = (
    "the MORPH-II layout: SSSSSS_NNGAA.JPG files (e.g. 002537_01M22.JPG) in ROOT or its subfolders, optionally "
    "with the release CSV (id_num, ..., gender, ..., age, ..., photo)"
)


class _MorphName(NamedTuple):
    subject: str
    gender: int
    age: float


def _parse_morph_name(stem: str) -> _MorphName | None:
    match = MORPH_NAME.fullmatch(stem)
    if match is None:
        return None
    return _MorphName(match[1], MORPH_GENDERS[match[3].upper()], float(match[4]))


def _normalise_header(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _morph_csv_columns(csv_path: Path) -> dict[str, str] | None:
    """Role ("path", "age", ...) -> the CSV's own column name; None when it lacks a path or an age column."""
    with csv_path.open(newline="", encoding="utf-8-sig", errors="replace") as csv_file:
        header = next(csv.reader(csv_file), [])
    by_normalised = {_normalise_header(name): name for name in header}
    columns = {}
    for role, candidates in MORPH_CSV_COLUMNS.items():
        found = next((by_normalised[name] for name in candidates if name in by_normalised), None)
        if found is not None:
            columns[role] = found
    return columns if "path" in columns and "age" in columns else None


def _morph_csvs(root: Path) -> list[tuple[Path, dict[str, str]]]:
    csv_paths = _files(root, MORPH_CSV_SEARCH_DEPTH, lambda name: name.lower().endswith(".csv"))
    found = [(path, _morph_csv_columns(path)) for path in csv_paths]
    return [(path, columns) for path, columns in found if columns is not None]


def _csv_field(row: Mapping[str, str | None], columns: Mapping[str, str], role: str) -> str:
    """The row's stripped value for a role; "" when the CSV has no such column or the row is short."""
    column = columns.get(role)
    return (row.get(column) or "").strip() if column else ""


def _find_listed_image(photo: str, bases: Sequence[Path], images_by_name: Mapping[str, Path]) -> Path | None:
    relative = photo.replace("\\", "/")  # some CSVs carry Windows paths
    for base in bases:
        candidate = base / relative
        if candidate.is_file():
            return candidate
    # Fall back to the bare name: releases move the images into differently named folders.
    return images_by_name.get(PurePosixPath(relative).name.lower())


def _morph_record(image: Path, row: Mapping[str, str | None], columns: Mapping[str, str]) -> Record | None:
    """The row's labels, gaps filled from the file name (which repeats them); None when no age is found."""
    from_name = _parse_morph_name(image.stem)
    age = _parse_number(_csv_field(row, columns, "age"))
    gender = MORPH_GENDERS.get(_csv_field(row, columns, "gender").upper())
    subject = _csv_field(row, columns, "subject")
    if from_name is not None:
        age = from_name.age if age is None else age
        gender = from_name.gender if gender is None else gender
        subject = subject or from_name.subject
    if age is None:
        return None
    return Record(str(image), age, GENDER_UNKNOWN if gender is None else gender, subject=subject or image.stem)


def _morph_records_from_csvs(
    root: Path, csvs: list[tuple[Path, dict[str, str]]], images: list[Path]
) -> LoadResult:
    images_by_name = {path.name.lower(): path for path in images}
    records, problems, seen = [], [], set()
    for csv_path, columns in csvs:
        with csv_path.open(newline="", encoding="utf-8-sig", errors="replace") as csv_file:
            for line_no, row in enumerate(csv.DictReader(csv_file), 2):
                where = f"{csv_path}:{line_no}"
                photo = _csv_field(row, columns, "path")
                image = _find_listed_image(photo, (csv_path.parent, root), images_by_name) if photo else None
                if image is None:
                    problems.append((where, f"image {photo!r} not found"))
                    continue
                if image in seen:
                    problems.append((where, f"{photo} is listed more than once"))
                    continue
                record = _morph_record(image, row, columns)
                if record is None:
                    problems.append((where, f"no age in the row or the name of {photo}"))
                    continue
                seen.add(image)
                records.append(record)
    return records, problems


def load_morph2(root: Path) -> LoadResult:
    if not root.is_dir():
        raise _layout_error(root, MORPH_LAYOUT)
    images = _image_files(root, max_depth=None)
    csvs = _morph_csvs(root)
    if csvs:
        records, problems = _morph_records_from_csvs(root, csvs, images)
    else:
        records, problems = [], []
        for path in images:
            parsed = _parse_morph_name(path.stem)
            if parsed is None:
                problems.append((str(path), "name is not SSSSSS_NNGAA (subject_picture, M/F, age)"))
                continue
            records.append(Record(str(path), parsed.age, parsed.gender, subject=parsed.subject))
    if not records:
        raise _layout_error(root, MORPH_LAYOUT)
    return records, problems


# --- FG-NET ------------------------------------------------------------------------------------------------------

FGNET_NAME = re.compile(r"(\d{3})A(\d{2})([a-z]?)", re.IGNORECASE)  # subject, "A", age, optional suffix
FGNET_LAYOUT = "the FG-NET layout: 'images/' (or ROOT itself) holding SSSAYY.JPG files such as 001A02.JPG, 001A43b.JPG"


def load_fgnet(root: Path) -> LoadResult:
    image_dir = _child(root, "images") or root
    if not image_dir.is_dir():
        raise _layout_error(root, FGNET_LAYOUT)
    records, problems = [], []
    for path in _image_files(image_dir):
        match = FGNET_NAME.fullmatch(path.stem)
        if match is None:
            problems.append((str(path), "name is not SSSAYY[x] (3-digit subject, 'A', 2-digit age)"))
            continue
        # FG-NET's names carry no gender.
        records.append(Record(str(path), float(match[2]), GENDER_UNKNOWN, subject=match[1]))
    if not records:
        raise _layout_error(root, FGNET_LAYOUT)
    return records, problems


# --- MegaAge-Asian -----------------------------------------------------------------------------------------------

MEGAAGE_SPLITS = ("train", "test")
GENDER_ANNOTATION_FILE = "gender_annotation.csv"
GENDER_ANNOTATION_COLUMNS = ("split", "name", "gender", "confidence", "source")
GENDER_WORDS = {GENDER_FEMALE: "female", GENDER_MALE: "male", GENDER_UNKNOWN: "unknown"}
GENDER_BY_WORD = {word: gender for gender, word in GENDER_WORDS.items()}
MEGAAGE_LAYOUT = (
    "the MegaAge-Asian layout: 'train/' and 'test/' image folders with 'list/train_name.txt', "
    "'list/train_age.txt', 'list/test_name.txt', 'list/test_age.txt' (or those files in ROOT)"
)


class GenderAnnotation(NamedTuple):
    """One row of a gender annotation file (written by the annotation tool, read by the MegaAge adapter)."""

    split: str  # "train" / "test"
    name: str  # the image's name as its list file gives it, e.g. "1.jpg"
    gender: int  # GENDER_*
    confidence: float | None = None
    source: str = ""  # what produced the label, e.g. "classifiers-agree" or "manual"


def read_gender_annotation(path: str | os.PathLike) -> dict[tuple[str, str], int]:
    """(split, name) -> GENDER_*; a later row for the same image overrides an earlier one, so corrections can
    be appended. Raises ValueError on a malformed file: it is our own output, so a bad row is a bug to surface."""
    path = Path(path)
    labels: dict[tuple[str, str], int] = {}
    with path.open(newline="", encoding="utf-8-sig") as csv_file:
        reader = csv.DictReader(csv_file)
        missing = {"split", "name", "gender"} - set(reader.fieldnames or ())
        if missing:
            expected = ",".join(GENDER_ANNOTATION_COLUMNS)
            raise ValueError(f"{path}: gender annotation lacks columns {sorted(missing)}; expected {expected}")
        for line_no, row in enumerate(reader, 2):
            word = (row["gender"] or "").strip().lower()
            if word not in GENDER_BY_WORD:
                raise ValueError(f"{path}:{line_no}: gender {word!r} is not male, female or unknown")
            labels[((row["split"] or "").strip(), (row["name"] or "").strip())] = GENDER_BY_WORD[word]
    return labels


def _annotation_cells(row: GenderAnnotation | Sequence | Mapping) -> list[str]:
    fields = GenderAnnotation(**row) if isinstance(row, Mapping) else GenderAnnotation(*row)
    gender = fields.gender if isinstance(fields.gender, str) else GENDER_WORDS[fields.gender]
    if gender.strip().lower() not in GENDER_BY_WORD:
        raise ValueError(f"gender {gender!r} for {fields.split}/{fields.name} is not male, female or unknown")
    confidence = "" if fields.confidence in (None, "") else f"{float(fields.confidence):.4g}"
    return [fields.split, fields.name, gender.strip().lower(), confidence, fields.source]


def write_gender_annotation(path: str | os.PathLike, rows: Iterable[GenderAnnotation | Sequence | Mapping]) -> None:
    """Write rows (GenderAnnotation, or tuples/dicts with its fields; gender as GENDER_* or its word).

    Written to a temporary file and renamed so an interrupted annotation session never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as csv_file:
        writer = csv.writer(csv_file)
        writer.writerow(GENDER_ANNOTATION_COLUMNS)
        writer.writerows(_annotation_cells(row) for row in rows)
    os.replace(partial, path)


def _megaage_list_files(root: Path, split: str) -> tuple[Path | None, Path | None]:
    """(names file, ages file) of a split, looked up in ROOT/list/ first, then ROOT."""
    for folder in (_child(root, "list"), root):
        if folder is None:
            continue
        names = _child(folder, f"{split}_name.txt", want_dir=False)
        ages = _child(folder, f"{split}_age.txt", want_dir=False)
        if names or ages:
            return names, ages
    return None, None


def _default_gender_file(root: Path) -> Path | None:
    for folder in (_child(root, "list"), root):
        found = _child(folder, GENDER_ANNOTATION_FILE, want_dir=False) if folder else None
        if found:
            return found
    return None


def load_megaage_asian(root: Path, gender_file: Path | None = None) -> LoadResult:
    if not root.is_dir():
        raise _layout_error(root, MEGAAGE_LAYOUT)
    gender_file = gender_file or _default_gender_file(root)
    genders = read_gender_annotation(gender_file) if gender_file else {}
    records, problems, found_split = [], [], False
    for split in MEGAAGE_SPLITS:
        names_file, ages_file = _megaage_list_files(root, split)
        if names_file is None and ages_file is None:
            continue
        if names_file is None or ages_file is None:
            present = names_file or ages_file
            raise DatasetLayoutError(f"{root}: found {present} but not its partner {split}_name.txt/{split}_age.txt")
        found_split = True
        names, ages = _read_lines(names_file), _read_lines(ages_file)
        if len(names) != len(ages):
            raise DatasetLayoutError(
                f"{names_file} has {len(names)} lines but {ages_file} has {len(ages)}: "
                "they must list the same images in the same order"
            )
        image_dir = _child(root, split) or root / split
        present_images = {entry.name for entry in image_dir.iterdir()} if image_dir.is_dir() else set()
        for line_no, (name, age_text) in enumerate(zip(names, ages), 1):
            age = _parse_number(age_text)
            if not name:
                problems.append((f"{names_file}:{line_no}", "empty image name"))
            elif name not in present_images:
                problems.append((str(image_dir / name), f"listed in {names_file.name}:{line_no} but missing"))
            elif age is None:
                problems.append((f"{ages_file}:{line_no}", f"age {age_text!r} is not a number"))
            else:
                path = image_dir / name
                gender = genders.get((split, name), GENDER_UNKNOWN)
                # Train and test both number their images from 1.jpg: qualify the stem so subjects stay distinct.
                records.append(Record(str(path), age, gender, subject=f"{split}/{path.stem}", split=split))
    if not found_split:
        raise _layout_error(root, MEGAAGE_LAYOUT)
    if not records:
        raise _layout_error(root, MEGAAGE_LAYOUT + " with the listed images present")
    return records, problems


# --- CelebA gender folders -----------------------------------------------------------------------------------------
# CelebA face crops sorted by gender, as the public repository naheri/gender_detection keeps them in
# datasets/dataset/: {Train,Validation,Test}/{male,female}/*.jpg, plus unlabelled faces loose in Train/. No ages:
# training gives them a teacher's age (training/teachers), so they only serve distillation.

CELEBA_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
CELEBA_GENDERS = {"male": GENDER_MALE, "female": GENDER_FEMALE}
CELEBA_LAYOUT = ("the CelebA gender layout: Train/, Validation/, Test/ folders (any of them) holding male/ and "
                 "female/ folders of face images; images loose in a split folder have no gender label")


def load_celeba_gender(root: Path) -> LoadResult:
    records: list[Record] = []
    problems: list[Problem] = []
    split_dirs = [entry for entry in sorted(root.iterdir()) if entry.is_dir() and entry.name.lower() in
                  CELEBA_SPLITS] if root.is_dir() else []
    for split_dir in split_dirs:
        split = CELEBA_SPLITS[split_dir.name.lower()]
        folders = [(split_dir, GENDER_UNKNOWN)] + [
            (entry, CELEBA_GENDERS[entry.name.lower()]) for entry in sorted(split_dir.iterdir())
            if entry.is_dir() and entry.name.lower() in CELEBA_GENDERS]
        for folder, gender in folders:
            for path in _image_files(folder):
                # CelebA's serials (000001.jpg ...) identify the photo, not the person: one subject per photo.
                records.append(Record(str(path), AGE_UNKNOWN, gender, subject=f"celeba-{path.stem}", split=split))
    if not records:
        raise _layout_error(root, CELEBA_LAYOUT)
    return records, problems


# --- FairFace -----------------------------------------------------------------------------------------------------
# FairFace (Karkkainen & Joo, WACV 2021; CC BY 4.0): in-the-wild faces balanced over seven race groups, labelled with
# an age group, gender and race. The layout of a copy such as the public repository sumanvithaeadala/
# EthnicityDetection's: fairface_label_train.csv (file,age,gender,race[,service_test]) beside fair_face/train/N.jpg
# (the CSV's `file` is relative to the image folder's parent). Only train/ is read: FairFace's val/ is kept for
# measurements made outside this project, so it is never loaded, even when its CSV sits beside train's.

FAIRFACE_LABEL_FILE = "fairface_label_train.csv"
FAIRFACE_LICENCE = ("FairFace (K. Karkkainen and J. Joo, \"FairFace: Face Attribute Dataset for Balanced Race, Gender, "
                    "and Age\", WACV 2021; github.com/joojs/fairface), released by its authors under CC BY 4.0 "
                    "(attribution required; its photos come from the YFCC-100M Flickr set)")
FAIRFACE_COLUMNS = ("file", "age", "gender", "race")
FAIRFACE_GENDERS = {"male": GENDER_MALE, "female": GENDER_FEMALE}
FAIRFACE_RACES = ("Black", "East Asian", "Indian", "Latino_Hispanic", "Middle Eastern", "Southeast Asian", "White")
# FairFace's age groups as [low, high) years, under every spelling seen: a spreadsheet turned "3-9" into "03-Sep"
# (or "Sep-03") and "10-19" into "Oct-19".
FAIRFACE_AGE_GROUPS = {
    "0-2": (0.0, 3.0), "3-9": (3.0, 10.0), "10-19": (10.0, 20.0), "20-29": (20.0, 30.0), "30-39": (30.0, 40.0),
    "40-49": (40.0, 50.0), "50-59": (50.0, 60.0), "60-69": (60.0, 70.0), "more than 70": (70.0, math.inf),
}
FAIRFACE_AGE_SPELLINGS = {**{name: name for name in FAIRFACE_AGE_GROUPS},
                          "03-sep": "3-9", "sep-03": "3-9", "3-sep": "3-9", "sep-3": "3-9", "oct-19": "10-19",
                          "19-oct": "10-19", "70+": "more than 70", "70-": "more than 70"}
OPEN_GROUP_SPAN = 10.0  # the representative age of an open-ended group: its low end + half this
FAIRFACE_LAYOUT = (f"the FairFace layout: {FAIRFACE_LABEL_FILE} (columns {', '.join(FAIRFACE_COLUMNS)}) beside the "
                   "folder its `file` paths start in (fair_face/train/1.jpg ...)")


def representative_age(age_range: tuple[float, float]) -> float:
    low, high = age_range
    return low + OPEN_GROUP_SPAN / 2 if math.isinf(high) else (low + high) / 2


def parse_age_group(text: str) -> tuple[float, float] | None:
    """[low, high) years of a FairFace age cell under any of its spellings; None for an unknown cell."""
    name = FAIRFACE_AGE_SPELLINGS.get(text.strip().lower())
    return FAIRFACE_AGE_GROUPS[name] if name else None


def _race_key(text: str) -> str:
    return re.sub(r"[\s_]+", " ", text.strip().lower())  # "Latino_Hispanic" and "Latino Hispanic" alike


def _fairface_image_base(root: Path, label_file: Path, first_file: str) -> Path:
    """The folder the CSV's `file` paths are relative to: beside the CSV, or in its fair_face/ folder."""
    for base in (label_file.parent, label_file.parent / "fair_face", root, root / "fair_face"):
        if (base / first_file).is_file():
            return base
    return label_file.parent / "fair_face"


def load_fairface(root: Path) -> LoadResult:
    label_file = _child(root, FAIRFACE_LABEL_FILE, want_dir=False) if root.is_dir() else None
    if label_file is None:
        raise _layout_error(root, FAIRFACE_LAYOUT)
    records: list[Record] = []
    problems: list[Problem] = []
    with label_file.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        header = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
        missing = [column for column in FAIRFACE_COLUMNS if column not in header]
        if missing:
            raise DatasetLayoutError(f"{label_file}: no column {', '.join(missing)} (expected {FAIRFACE_LAYOUT})")
        rows = list(reader)
    base = _fairface_image_base(root, label_file, (rows[0].get(header["file"]) or "").strip() if rows else "")
    races = {_race_key(race): race for race in FAIRFACE_RACES}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        cells = {column: (row.get(header[column]) or "").strip() for column in FAIRFACE_COLUMNS}
        where = f"{label_file}, line {line}"
        age_range = parse_age_group(cells["age"])
        gender = FAIRFACE_GENDERS.get(cells["gender"].lower())
        race = races.get(_race_key(cells["race"]))
        if not cells["file"] or PurePosixPath(cells["file"]).parts[:1] == ("val",):
            if cells["file"]:  # a val row in the train CSV: reserved, never read
                problems.append((where, f"{cells['file']}: FairFace's val/ is reserved, not read"))
            else:
                problems.append((where, "no file name"))
            continue
        unknown = [f"{column} {cells[column]!r}" for column, ok in
                   (("age", age_range), ("gender", gender is not None), ("race", race)) if not ok]
        if unknown:
            problems.append((where, f"unknown {', '.join(unknown)} (file {cells['file']})"))
            continue
        path = base / PurePosixPath(cells["file"])
        if not path.is_file():
            problems.append((str(path), f"listed in {where} but missing"))
            continue
        records.append(Record(str(path), representative_age(age_range), gender, subject=f"fairface-{cells['file']}",
                              split="train", age_range=age_range, race=race))
    if not records:
        raise _layout_error(root, FAIRFACE_LAYOUT)
    return records, problems


# Datasets whose licence allows more than non-commercial research, with what a model card must say of them.
OPEN_DATASET_LICENCES = {"fairface": FAIRFACE_LICENCE}


# --- registry ----------------------------------------------------------------------------------------------------

DATASETS: dict[str, Callable[..., LoadResult]] = {
    "morph2": load_morph2,
    "fgnet": load_fgnet,
    "megaage_asian": load_megaage_asian,
    "aaf": load_aaf,
    "utkface": load_utkface,
    "celeba_gender": load_celeba_gender,
    "fairface": load_fairface,
}


def load_records(
    name: str, root: str | os.PathLike, *, gender_file: str | os.PathLike | None = None
) -> LoadResult:
    """Records and problems of dataset `name` (a DATASETS key) stored at root in its published layout."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if gender_file is None:
        return DATASETS[name](_absolute(root))
    if name != "megaage_asian":
        raise ValueError(f"gender_file only applies to megaage_asian; {name} has its own gender labels or none")
    return DATASETS[name](_absolute(root), gender_file=_absolute(gender_file))


# Name patterns that identify a dataset from a folder of its images.
_NAME_MATCHERS: dict[str, Callable[[Path], bool]] = {
    "utkface": lambda path: _parse_utk_name(path.name) is not None,
    "morph2": lambda path: _parse_morph_name(path.stem) is not None,
    "fgnet": lambda path: FGNET_NAME.fullmatch(path.stem) is not None,
    "aaf": lambda path: AAF_NAME.fullmatch(path.stem) is not None,
}


def detect_dataset(root: str | os.PathLike) -> str:
    """Best-effort guess of the layout at root: distinctive folders and list files first, then the naming
    scheme most of the images (up to two levels down) follow."""
    root = _absolute(root)
    if not root.is_dir():
        raise _layout_error(root, "a dataset folder")
    if _child(root, *AAF_IMAGE_FOLDERS):
        return "aaf"
    if _child(root, FAIRFACE_LABEL_FILE, want_dir=False):
        return "fairface"
    if any(any(_megaage_list_files(root, split)) for split in MEGAAGE_SPLITS):
        return "megaage_asian"
    if _morph_csvs(root):
        return "morph2"
    images = _image_files(root, max_depth=2)
    matches = {name: sum(map(matcher, images)) for name, matcher in _NAME_MATCHERS.items()}
    best = max(matches, key=matches.__getitem__)
    if matches[best] == 0:
        raise _layout_error(root, f"one of the layouts {', '.join(DATASETS)}")
    return best


# --- split helpers -----------------------------------------------------------------------------------------------
# Pure and seeded with random.Random, whose shuffle is stable across Python versions: a seed names one split.


def _subject_key(record: Record) -> str:
    # No subject id: the image is its own subject rather than all id-less images being one person.
    return record.subject or record.path


def _indices_by_subject(records: Sequence[Record]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(_subject_key(record), []).append(index)
    return groups


def kfold(
    records: Sequence[Record], k: int = 5, seed: int = 0, by_subject: bool = False
) -> list[tuple[list[int], list[int]]]:
    """(train_idx, test_idx) per fold. Image-level random folds (the paper's MORPH-II protocol) differ in size by
    at most one; by_subject keeps every subject in one fold, filling the smallest fold with the largest subject
    first so fold sizes stay close."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    rng = random.Random(seed)
    fold_of = [0] * len(records)
    if by_subject:
        groups = _indices_by_subject(records)
        if k > len(groups):
            raise ValueError(f"{k} subject-exclusive folds need at least {k} subjects, got {len(groups)}")
        subjects = sorted(groups)
        rng.shuffle(subjects)
        subjects.sort(key=lambda subject: len(groups[subject]), reverse=True)  # stable: ties stay shuffled
        fold_sizes = [0] * k
        for subject in subjects:
            fold = fold_sizes.index(min(fold_sizes))
            fold_sizes[fold] += len(groups[subject])
            for index in groups[subject]:
                fold_of[index] = fold
    else:
        if k > len(records):
            raise ValueError(f"{k} folds need at least {k} records, got {len(records)}")
        order = list(range(len(records)))
        rng.shuffle(order)
        for position, index in enumerate(order):
            fold_of[index] = position % k
    return [
        ([i for i, f in enumerate(fold_of) if f != fold], [i for i, f in enumerate(fold_of) if f == fold])
        for fold in range(k)
    ]


def leave_one_subject_out(records: Sequence[Record]) -> list[tuple[str, list[int], list[int]]]:
    """(subject, train_idx, test_idx) per subject, sorted by subject: FG-NET's leave-one-person-out protocol."""
    groups = _indices_by_subject(records)
    return [
        (subject, [i for i, record in enumerate(records) if _subject_key(record) != subject], test)
        for subject, test in sorted(groups.items())
    ]


def official_split(
    records: Sequence[Record], train: str = "train", test: str | Sequence[str] = ("val", "test")
) -> tuple[list[int], list[int]]:
    """(train_idx, test_idx) from the records' own split names; ValueError when either side is empty."""
    test_names = {test} if isinstance(test, str) else set(test)
    train_idx = [i for i, record in enumerate(records) if record.split == train]
    test_idx = [i for i, record in enumerate(records) if record.split in test_names]
    if not train_idx or not test_idx:
        found = sorted({record.split for record in records})
        raise ValueError(f"no official {train!r}/{sorted(test_names)} split in these records; split names: {found}")
    return train_idx, test_idx


def random_split(
    records: Sequence[Record], test_fraction: float = 0.2, seed: int = 0, by_subject: bool = False
) -> tuple[list[int], list[int]]:
    """Seeded (train_idx, test_idx), e.g. UTKFace's 80/20. by_subject keeps every subject (for UTKFace: every
    photo, whichever crops of it are loaded) on one side, taking shuffled subjects into the test side until it
    holds the wanted fraction of images."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    rng = random.Random(seed)
    test_count = round(len(records) * test_fraction)
    if not by_subject:
        order = list(range(len(records)))
        rng.shuffle(order)
        return sorted(order[test_count:]), sorted(order[:test_count])
    groups = _indices_by_subject(records)
    subjects = sorted(groups)
    rng.shuffle(subjects)
    test: list[int] = []
    for subject in subjects:
        if len(test) >= test_count:
            break
        test.extend(groups[subject])
    held_out = set(test)
    return [i for i in range(len(records)) if i not in held_out], sorted(test)


def stratified_split(records: Sequence[Record], test_fraction: float = 0.1,
                     seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded (train_idx, test_idx) holding out test_fraction of every (race, age group) stratum, so a dev set of a
    tenth has every race and age in the proportions of the whole (FairFace's dev split)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    strata: dict[tuple, list[int]] = {}
    for index, record in enumerate(records):
        strata.setdefault((record.race, record.age_range or record.age), []).append(index)
    rng = random.Random(seed)
    # Systematic sampling over the strata laid end to end, each shuffled: every 1/test_fraction-th record is held
    # out, so each stratum gives its share within one record, small strata included, and the total is exact.
    ordered: list[int] = []
    for key in sorted(strata, key=repr):
        members = sorted(strata[key], key=lambda i: records[i].path)
        rng.shuffle(members)
        ordered.extend(members)
    offset = rng.random()
    test = [index for position, index in enumerate(ordered)
            if math.floor((position + 1) * test_fraction + offset) > math.floor(position * test_fraction + offset)]
    held_out = set(test)
    return [i for i in range(len(records)) if i not in held_out], sorted(test)
