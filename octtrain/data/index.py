"""``octtrain index``: a manifest from a folder of volumes in any readable format and, optionally,
a label sheet (CSV or Excel), so that a data set as published becomes ``path,label,patient_id``.

What counts as a volume under ``--root`` (searched recursively, hidden entries skipped): a file
whose suffix :mod:`octtrain.data.readers` reads (``.tif``/``.tiff`` as multi-page volumes); an
``.e2e`` holding several OCT volumes counts once per volume, as ``scan.e2e#volume=K``; a folder
below the root holding PNG/JPEG/BMP B-scans and no other volume or subfolder is one volume (the
images beside a HEYEX ``.xml`` belong to that export, which is the ``.xml``).

Labels come from the sheet when given (its ``--label-column``, matched by ``--key-column``
against a volume's path relative to the root, its file name or its name without suffix), else
from the first folder under the root (``root/<class>/...``, as ``data.root``). Patient id and
laterality: the sheet's ``patient_id``/``laterality`` columns win; where it has none, the HEYEX
header's (:func:`octtrain.data.formats.header_info`); else the patient is the name's part before
the first ``_`` (:func:`octtrain.data.records.patient_id_from_stem`). A sheet value that
disagrees with a header is kept and reported.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from octtrain.data import formats, readers
from octtrain.data.records import patient_id_from_stem
from octtrain.errors import DataError, host_errors, optional_import
from octtrain.files import write_atomic

MANIFEST_HEADER = ("path", "label", "patient_id", "laterality")
KEY_COLUMNS = ("path", "volume", "file", "name", "id")  # tried in order when --key-column is not given


@dataclass(frozen=True)
class Indexed:
    """One volume found under the root, with what is known about it."""

    path: Path  # absolute; an E2E volume carries its #volume=K
    relative: str  # to the root, POSIX
    label: str | None
    patient_id: str
    laterality: str


@dataclass
class IndexReport:
    """The volumes and everything that did not line up."""

    volumes: list[Indexed]
    unmatched_rows: list[str] = field(default_factory=list)  # sheet keys that name no volume
    conflicts: list[str] = field(default_factory=list)  # sheet vs header, sheet kept

    @property
    def unlabelled(self) -> list[Indexed]:
        return [v for v in self.volumes if v.label is None]

    def class_counts(self) -> Counter[str]:
        return Counter(v.label for v in self.volumes if v.label is not None)

    def summary(self, limit: int = 10) -> list[str]:
        """Lines for the terminal: volumes per class, then what did not line up (at most
        ``limit`` names each)."""
        counts = self.class_counts()
        lines = [f"{len(self.volumes)} volumes, {len(counts)} classes"]
        lines += [f"  {name:<20} {n:>6}" for name, n in sorted(counts.items())]
        for title, items in (("volumes without a label", [v.relative for v in self.unlabelled]),
                             ("sheet rows matching no volume", self.unmatched_rows),
                             ("sheet and header disagree (the sheet is kept)", self.conflicts)):
            if items:
                more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
                lines.append(f"{title}: {len(items)}: {', '.join(items[:limit])}{more}")
        return lines


# ---------------------------------------------------------------------------------------------
# Finding volumes
# ---------------------------------------------------------------------------------------------


BSCAN_IMAGES = (".png", ".jpg", ".jpeg", ".bmp")  # .tif/.tiff files are multi-page volumes here


def _is_bscan_folder(files: Sequence[Path], dirs: Sequence[Path]) -> bool:
    """B-scan images and nothing else readable, no subfolders (a HEYEX export has its .xml)."""
    readable = [f for f in files if readers.volume_suffix(f) in readers.VOLUME_SUFFIXES
                or f.suffix.lower() in BSCAN_IMAGES]
    return not dirs and bool(readable) and all(f.suffix.lower() in BSCAN_IMAGES for f in readable)


def find_volumes(folder: Path, *, top: bool = True) -> Iterator[Path]:
    """Every volume under ``folder`` (see the module docstring), in natural name order."""
    entries = sorted((e for e in folder.iterdir() if not e.name.startswith(".")),
                     key=lambda e: readers.natural_key(e.name))
    files = [e for e in entries if e.is_file()]
    dirs = [e for e in entries if e.is_dir()]
    if not top and _is_bscan_folder(files, dirs):
        yield folder
        return
    for f in files:
        if readers.volume_suffix(f) in readers.VOLUME_SUFFIXES:
            yield f
    for d in dirs:
        yield from find_volumes(d, top=False)


def _expand_e2e(path: Path) -> list[Path]:
    """``scan.e2e`` → one path per OCT volume it holds (``scan.e2e#volume=K`` when several)."""
    count = formats.e2e_volume_count(path)
    return [path] if count == 1 else [Path(f"{path}#volume={k}") for k in range(count)]


# ---------------------------------------------------------------------------------------------
# The label sheet
# ---------------------------------------------------------------------------------------------


def _cell(value: object) -> str:
    """A sheet cell as text: Excel's 1001.0 for an id typed as a number is ``1001``."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_sheet(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV or .xlsx label sheet (first worksheet, first row the header) as text."""
    if not path.is_file():
        raise DataError(f"{path}: label sheet not found")
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        openpyxl = optional_import("openpyxl", formats.FORMATS_EXTRA, f"{path}: reading .xlsx files")
        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
            rows = [[_cell(v) for v in row] for row in book.worksheets[0].iter_rows(values_only=True)]
            book.close()
        except Exception as err:  # openpyxl's and zipfile's own errors: not a readable workbook
            raise DataError(f"{path}: cannot read the label sheet ({type(err).__name__}: {err})") from None
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read the label sheet ({err})") from None
        rows = [[c.strip() for c in row] for row in csv.reader(io.StringIO(text))]
    rows = [r for r in rows if any(r)]
    if not rows:
        raise DataError(f"{path}: label sheet is empty")
    header, body = rows[0], rows[1:]
    return [dict(zip(header, r + [""] * (len(header) - len(r)), strict=False)) for r in body]


def _key_column(sheet: Path, columns: Sequence[str], key: str | None, label: str) -> str:
    if label not in columns:
        raise DataError(f"{sheet}: no label column {label!r} (columns: {', '.join(columns)}); "
                        "name it with --label-column")
    if key is not None:
        if key not in columns:
            raise DataError(f"{sheet}: no key column {key!r} (columns: {', '.join(columns)})")
        return key
    lowered = {c.lower(): c for c in columns}
    for name in KEY_COLUMNS:
        if name in lowered:
            return lowered[name]
    raise DataError(f"{sheet}: no column names the volumes (one of {', '.join(KEY_COLUMNS)}; "
                    f"columns: {', '.join(columns)}); name it with --key-column")


def _keys(relative: str) -> list[str]:
    """What a sheet may call a volume: its relative path, file name, or name without suffix."""
    plain = relative.partition("#")[0] if "#volume=" in relative else relative
    name = plain.rsplit("/", 1)[-1]
    return [relative, plain, name, readers.volume_stem(name)]


# ---------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------


def build_index(root: str | os.PathLike[str], sheet: str | os.PathLike[str] | None = None, *,
                key_column: str | None = None, label_column: str = "label") -> IndexReport:
    """Index ``root`` against ``sheet`` (see the module docstring)."""
    base = Path(root).absolute()
    if not base.is_dir():
        raise DataError(f"{base}: --root is not a directory")
    found: list[Path] = []
    for path in find_volumes(base):
        found.extend(_expand_e2e(path) if readers.volume_suffix(path) == ".e2e" else [path])
    if not found:
        raise DataError(f"{base}: no volumes found (supported: {', '.join(readers.SUPPORTED)})")
    rows: dict[str, dict[str, str]] = {}
    if sheet is not None:
        table = read_sheet(Path(sheet))
        key = _key_column(Path(sheet), list(table[0]) if table else [], key_column, label_column)
        rows = {r[key]: r for r in table if r.get(key)}
    report = IndexReport([])
    matched: set[str] = set()
    for path in found:
        relative = Path(os.path.relpath(path, base)).as_posix()
        row_key = next((k for k in _keys(relative) if k in rows), None) if sheet is not None else None
        row = rows.get(row_key, {}) if row_key is not None else {}
        if row_key is not None:
            matched.add(row_key)
        if sheet is not None:
            label = row.get(label_column) or None
        else:
            label = relative.split("/", 1)[0] if "/" in relative else None
        header = formats.header_info(path)
        patient = _pick("patient id", relative, row.get("patient_id", ""), header.patient_id,
                        report.conflicts) or patient_id_from_stem(readers.volume_stem(path))
        sheet_eye = formats.normalize_laterality(row.get("laterality")) or ""
        eye = _pick("laterality", relative, sheet_eye, header.laterality, report.conflicts)
        report.volumes.append(Indexed(path, relative, label, patient, eye))
    report.unmatched_rows = [k for k in rows if k not in matched]
    return report


def _pick(what: str, relative: str, sheet: str, header: str | None, conflicts: list[str]) -> str:
    """The sheet's value where it has one (a different header value is noted), else the header's."""
    if sheet and header and sheet != header:
        conflicts.append(f"{relative}: {what} {sheet!r} in the sheet, {header!r} in its header")
    return sheet or header or ""


def manifest_text(report: IndexReport, out: Path) -> str:
    """The labelled volumes as a manifest CSV, paths relative to the manifest's folder."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_HEADER)
    folder = out.absolute().parent
    for v in report.volumes:
        if v.label is not None:
            path = Path(os.path.relpath(v.path, folder)).as_posix()
            writer.writerow((path, v.label, v.patient_id, v.laterality))
    return buffer.getvalue()


def write_index(report: IndexReport, out: str | os.PathLike[str], *, allow_unlabelled: bool) -> Path:
    """Write the manifest; refused (DataError) while a volume has no label, unless allowed (its
    row is then left out)."""
    target = Path(out)
    missing = report.unlabelled
    if missing and not allow_unlabelled:
        raise DataError(f"{len(missing)} volume(s) have no label (first: {missing[0].relative}); "
                        "label them or pass --allow-unlabelled to leave them out of "
                        f"{target.name}")
    if not report.class_counts():
        raise DataError(f"no volume has a label; {target} not written")
    with host_errors("the manifest", target):
        target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, manifest_text(report, target), "the manifest")
    return target
