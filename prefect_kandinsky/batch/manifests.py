"""Batch manifests: reading, validating, keying and pricing the rows of a batch.

Every row of a batch is one paid video, so a manifest is checked as a whole before anything
is paid: :func:`load_manifest` reads it (a local CSV or JSONL file, an ``s3://`` object, a
path in a storage block, or rows in memory), :func:`validate_rows` checks every row with the
same rules and messages as :class:`~prefect_kandinsky.gateway.models.VideoRequest`, and one
:class:`~prefect_kandinsky.gateway.exceptions.KandinskyManifestError`
lists every problem found, with
its line, field, value and what is allowed. Then :func:`estimate_batch_cost` prices the batch
by the documented price table and :func:`check_budget` refuses one over ``max_cost_usd``
(:class:`~prefect_kandinsky.gateway.exceptions.KandinskyBudgetError`), before the first submit.

A CSV manifest has a header row; columns are case-insensitive, empty cells take the default:

```
id,prompt,image_url,resolution,duration,steps,filename
sku-1,"The mug turns slowly on the table.",https://example.com/mug.jpg,1024P,5s,30,sku-1.mp4
sku-2,"The lamp flickers on.",images/lamp.png,,3,,sku-2.mp4
```

A JSONL manifest holds one JSON object per line with the same names. The image is an http(s)
URL, an ``s3://bucket/key`` URI, or a local file (relative to the manifest's folder).

Example:
    ```python
    from decimal import Decimal

    from prefect_kandinsky.batch.manifests import check_budget, estimate_batch_cost, load_manifest

    manifest = await load_manifest("catalogue.csv")  # every bad row at once, or none
    estimate = estimate_batch_cost(manifest.rows)
    for warning in check_budget(estimate, Decimal("25")):  # over $25: KandinskyBudgetError
        print(warning)
    print(estimate.table())
    ```

Only reading the manifest file touches the network (an ``s3://`` object or a remote block).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from decimal import Decimal
from functools import cache, partial
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from prefect_kandinsky.batch.problems import KNOWN_COLUMNS, RowProblem, manifest_error
from prefect_kandinsky.batch.sources import (
    DEFAULT_MAX_LINE_CHARS,
    LineOpener,
    bounded_lines,
    open_manifest,
    split_s3_uri,
)
from prefect_kandinsky.gateway.models import (
    AccelerationParam,
    DurationText,
    PromptParam,
    ResolutionParam,
    StepsParam,
    VideoRequest,
    check_image_url,
    invalid_value,
)
from prefect_kandinsky.gateway.prices import estimate_cost_usd
from prefect_kandinsky.media.images import IMAGE_SNIFF_BYTES, sniff_image_kind

__all__ = [
    "KNOWN_COLUMNS",
    "BatchRow",
    "ImageKind",
    "Manifest",
    "ManifestFormat",
    "RowProblem",
    "default_batch_id",
    "detect_format",
    "load_manifest",
    "manifest_error",
    "parse_manifest",
    "row_key",
    "split_s3_uri",
    "validate_rows",
]

DEFAULT_MAX_MANIFEST_ROWS = 100_000
"""The most rows a manifest may hold; reading stops past it, so a huge file cannot fill the
worker's memory (``load_manifest(max_rows=...)`` or :data:`MAX_MANIFEST_ROWS_ENV`)."""
MAX_MANIFEST_ROWS_ENV = "KANDINSKY_MAX_MANIFEST_ROWS"
"""Environment variable overriding :data:`DEFAULT_MAX_MANIFEST_ROWS`."""

ImageKind = Literal["url", "s3", "file"]
ManifestFormat = Literal["csv", "jsonl"]

MAX_NAME_BYTES = 255
"""Longest file or folder name (UTF-8 bytes) a row may give: what local file systems take."""
MAX_PATH_BYTES = 900
"""Longest ``destination/filename`` of a row, leaving room under S3's 1024-byte keys."""
COLUMN_ALIASES: dict[str, str] = {"image_url": "image", "steps": "num_inference_steps"}
"""Other names accepted for a column."""

_FORMAT_SUFFIXES: dict[str, ManifestFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_FORMAT_NAMES: dict[str, ManifestFormat] = {
    "csv": "csv",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "json": "jsonl",
}
_REQUIRED = ("prompt", "image")
_OPTIONAL = frozenset(KNOWN_COLUMNS) - set(_REQUIRED)
_REQUIRED_HINTS = {
    "prompt": "a non-empty description of the motion",
    "image": "an http(s) URL, an s3://bucket/key URI or a local file path",
}
_IMAGE_ALLOWED = "an http(s) URL, an s3://bucket/key URI or an existing local file"
_SHOWN_CHARS = 80
_REQUEST_DEFAULTS: dict[str, Any] = {
    name: field.default
    for name, field in VideoRequest.model_fields.items()
    if name in ("resolution", "duration", "num_inference_steps", "acceleration")
}


def _known_columns_text() -> str:
    aliases = {target: name for name, target in COLUMN_ALIASES.items()}
    return ", ".join(
        f"{name} (or {aliases[name]})" if name in aliases else name for name in KNOWN_COLUMNS
    )


def _shown(value: object) -> object:
    """A value as a problem shows it: long text cut, http(s) URLs without their secrets."""
    if isinstance(value, str):
        if "://" in value:
            from prefect_kandinsky.media.images import redact_url

            value = redact_url(value.strip())
        if len(value) > _SHOWN_CHARS:
            return value[: _SHOWN_CHARS - 3] + "..."
    return value


# -- rows -----------------------------------------------------------------------------------


def _image_kind(image: str) -> ImageKind:
    lowered = image.lower()
    if lowered.startswith(("http://", "https://")):
        return "url"
    if lowered.startswith("s3://"):
        return "s3"
    return "file"


def _image_value(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid_value(f"image must be {_IMAGE_ALLOWED}; got {_shown(value)!r}")
    text = value.strip()
    kind = _image_kind(text)
    if kind == "url":
        try:
            return check_image_url(text)
        except PydanticCustomError:
            raise invalid_value(f"image must be {_IMAGE_ALLOWED}; got {_shown(value)!r}") from None
    if kind == "s3":
        try:
            bucket, key = split_s3_uri(text)
        except ValueError as exc:
            raise invalid_value(f"image {exc}") from None
        return f"s3://{bucket}/{key}"
    if "://" in text:
        raise invalid_value(f"image must be {_IMAGE_ALLOWED}; got {_shown(value)!r}")
    return text


def _check_relative(value: object, field: str) -> str | None:
    """None for no value; the rule of ``persist_video``'s filename otherwise."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid_value(
            f"{field} must be a relative path such as 'day1/clip.mp4'; got {value!r}"
        )
    text = value.strip()
    if not text:
        return None
    # The same rule as the destination file name of persist_video (storage).
    from prefect_kandinsky.media.storage import check_filename

    if field == "filename":
        try:
            check_filename(text)
        except ValueError as exc:
            raise invalid_value(str(exc)) from None
        _check_length(text, field)
        return text
    folder = text.rstrip("/")
    try:
        check_filename(folder)
    except ValueError:
        raise invalid_value(
            "destination must be a relative folder such as 'catalogue' or 'day1/clips' "
            f"(no '..', no absolute path); got {value!r}"
        ) from None
    _check_length(folder, field)
    return folder


def _check_length(text: str, field: str) -> None:
    """Refuse a name no file system or object store would take, before anything is paid."""
    for part in text.split("/"):
        size = len(part.encode())
        if size > MAX_NAME_BYTES:
            raise invalid_value(
                f"{field} has a name of {size} bytes ({part[:24]!r}...); a file or folder "
                f"name may have at most {MAX_NAME_BYTES} bytes: shorten it"
            )
    if len(text.encode()) > MAX_PATH_BYTES:
        raise invalid_value(
            f"{field} is {len(text.encode())} bytes long; at most {MAX_PATH_BYTES} bytes "
            "(with destination and filename together well under S3's 1024-byte keys): "
            "shorten it"
        )


class BatchRow(BaseModel):
    """One row of a batch: one paid video, validated like a ``VideoRequest``.

    ``image`` may be an http(s) URL, an ``s3://bucket/key`` URI or a local file; the batch
    turns the latter two into a URL the gateway can read, then calls :meth:`request`.

    Example:
        ```python
        row = BatchRow(line=2, id="sku-1", prompt="The mug turns.", image="images/mug.png")
        row.image_kind  # "file"
        request = row.request("https://example.com/presigned/mug.png")
        ```
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    line: int = Field(
        ge=1,
        description="The row's 1-based line in the manifest (its first line, for a CSV row "
        "with multi-line cells); for rows given in memory, the index + 1.",
    )
    id: str | None = Field(
        default=None,
        description="The row's id given by the user, unique in the manifest; it keys the row "
        "across re-runs, so the same id is never paid twice.",
    )
    prompt: PromptParam = Field(
        description="Description of the desired motion, camera movement and emotional tone.",
    )
    image: str = Field(
        validation_alias=AliasChoices("image", "image_url"),
        description="The input image: an http(s) URL, an s3://bucket/key URI or a local file "
        "path (absolute once validated by validate_rows). Also read as image_url.",
    )
    resolution: ResolutionParam = Field(
        default=_REQUEST_DEFAULTS["resolution"],
        description='Output resolution preset: "256P", "512P" or "1024P".',
    )
    duration: DurationText = Field(
        default=_REQUEST_DEFAULTS["duration"],
        description='Video length in whole seconds, written "Ns" (an int is accepted).',
    )
    num_inference_steps: StepsParam = Field(
        default=_REQUEST_DEFAULTS["num_inference_steps"],
        description="Denoising steps, 20 to 50 (also read as steps).",
    )
    acceleration: AccelerationParam = Field(
        default=_REQUEST_DEFAULTS["acceleration"],
        description='Speed versus quality: "regular", "fast" or "ultra_fast".',
    )
    filename: str | None = Field(
        default=None,
        description="File name at the destination, such as sku-123.mp4 (relative, no '..'); "
        "None: named after the request id.",
    )
    destination: str | None = Field(
        default=None,
        description="Sub-folder or key prefix under the batch's destination (relative, no "
        "'..'); None: the batch's destination itself.",
    )

    @field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            return value.strip() or None
        raise invalid_value(f"id must be a text or a whole number; got {value!r}")

    @field_validator("image", mode="before")
    @classmethod
    def _check_image(cls, value: object) -> object:
        return _image_value(value)

    @field_validator("filename", mode="before")
    @classmethod
    def check_filename(cls, value: object) -> object:
        return _check_relative(value, "filename")

    @field_validator("destination", mode="before")
    @classmethod
    def _check_destination(cls, value: object) -> object:
        return _check_relative(value, "destination")

    @property
    def image_kind(self) -> ImageKind:
        """``url`` (http or https), ``s3`` (an s3:// URI) or ``file`` (a local path)."""
        return _image_kind(self.image)

    @property
    def duration_seconds(self) -> int:
        """The duration as a number of seconds."""
        return int(self.duration.rstrip("s"))

    @property
    def estimated_cost_usd(self) -> Decimal | None:
        """The documented price of this row, or None where none is documented (256P)."""
        return estimate_cost_usd(self.resolution, self.duration_seconds)

    @property
    def target(self) -> str | None:
        """``destination/filename`` relative to the batch's destination, None without name."""
        if self.filename is None:
            return None
        return posixpath.normpath(posixpath.join(self.destination or "", self.filename))

    def request(self, image_url: str) -> VideoRequest:
        """The generate request of this row, reading the image from ``image_url`` (http(s))."""
        return VideoRequest(
            prompt=self.prompt,
            image_url=image_url,
            resolution=self.resolution,
            duration=self.duration,
            num_inference_steps=self.num_inference_steps,
            acceleration=self.acceleration,
        )

    def content(self) -> dict[str, Any]:
        """What the row asks for, without its line and id: what makes two videos the same."""
        return {
            "prompt": self.prompt,
            "image": self.image,
            "resolution": self.resolution,
            "duration_seconds": self.duration_seconds,
            "num_inference_steps": self.num_inference_steps,
            "acceleration": self.acceleration,
            "filename": self.filename,
            "destination": self.destination,
        }


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _content_sha256(row: BatchRow) -> str:
    return hashlib.sha256(_canonical(row.content())).hexdigest()


# -- problems -------------------------------------------------------------------------------


# -- parsing --------------------------------------------------------------------------------


def detect_format(name: str, format: str | None = None) -> ManifestFormat:
    """``csv`` or ``jsonl``: ``format`` if given, else from the suffix of ``name``.

    ``.csv`` is CSV; ``.jsonl``, ``.ndjson`` and ``.json`` are JSON lines.
    """
    if format is not None:
        chosen = _FORMAT_NAMES.get(format.strip().lower())
        if chosen is None:
            raise ValueError(f"format must be 'csv' or 'jsonl'; got {format!r}")
        return chosen
    suffix = posixpath.splitext(name.replace("\\", "/").rstrip("/"))[1].lower()
    detected = _FORMAT_SUFFIXES.get(suffix)
    if detected is None:
        raise ValueError(
            f"Cannot tell the format of manifest {name!r} from its suffix: name it .csv or "
            ".jsonl (also .ndjson, .json), or pass format='csv' or format='jsonl'"
        )
    return detected


def parse_manifest(
    text: str, *, format: ManifestFormat, source: str = "<rows>"
) -> list[tuple[int, dict[str, Any]]]:
    """Read the rows of a CSV or JSONL manifest as (line, values), unchecked.

    CSV: a header row, columns case-insensitive and trimmed (``image_url`` is ``image``,
    ``steps`` is ``num_inference_steps``), cells trimmed; a quoted cell may span lines, and a
    row's line is the line it starts on. JSONL: one JSON object per line, blank lines
    skipped. A leading BOM is ignored.

    Raises:
        KandinskyManifestError: listing every line that cannot be read (broken JSON, a line
            that is not an object, a row with more cells than the header) and every unknown,
            repeated or missing column, at once.
    """
    rows, problems = _parse(text, format)
    if problems:
        raise manifest_error(source, problems)
    return rows


def _parse(
    text: str, format: ManifestFormat
) -> tuple[list[tuple[int, dict[str, Any]]], list[RowProblem]]:
    problems: list[RowProblem] = []
    lines = io.StringIO(text.removeprefix("\ufeff"), newline=_NEWLINE[format])
    return list(_rows_of(lines, format, problems, set())), problems


_NEWLINE: dict[ManifestFormat, str] = {"csv": "", "jsonl": "\n"}
"""How lines end: the csv module's own rule; JSON lines split on \\n only (a JSON string may
hold U+2028 and other characters ``str.splitlines`` would break on)."""


def _rows_of(
    lines: Iterable[str], format: ManifestFormat, problems: list[RowProblem], missing: set[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The rows of ``lines`` as they are read; problems and missing required columns are
    added to ``problems`` and ``missing`` on the way."""
    if format == "csv":
        return _parse_csv(lines, problems, missing)
    return _parse_jsonl(lines, problems)


def _header_problem(field: str | None, value: object, message: str) -> RowProblem:
    return RowProblem(line=1, field=field, value=value, message=message, scope="header")


def _csv_records(lines: Iterable[str]) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """(first line, cells) of each record, or (first line, error) where quoting is broken."""
    reader = csv.reader(lines, strict=True)
    previous_end = 0
    while True:
        start = previous_end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The reader starts afresh on the next line: the rows after it are still read.
            yield start, exc
        else:
            yield start, cells
        previous_end = reader.line_num


def _parse_csv(
    lines: Iterable[str], problems: list[RowProblem], missing: set[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    header: list[str | None] | None = None
    header_line = 1
    unnamed_used: dict[int, int] = {}
    for start, cells in _csv_records(lines):
        if isinstance(cells, csv.Error):
            problems.append(
                RowProblem(
                    line=start, message=f"not valid CSV ({cells}); check the quotes of this row"
                )
            )
            continue
        if not any(cell.strip() for cell in cells):
            continue
        if header is None:
            header_line = start
            header = _read_header(cells, problems, start)
            missing.update(name for name in _REQUIRED if name not in header)
            continue
        if len(cells) > len(header):
            problems.append(
                RowProblem(
                    line=start,
                    value=_shown(cells[len(header)]),
                    message=f"row has {len(cells)} cells but the header has {len(header)} "
                    "columns; quote cells that hold a comma",
                )
            )
            continue
        values: dict[str, Any] = {}
        for index, cell in enumerate(cells):
            name = header[index]
            if name == _IGNORED:
                continue  # an unknown or repeated column, reported on the header
            if name is None:
                if cell.strip():
                    unnamed_used.setdefault(index, start)
                continue
            values[name] = cell.strip()
        yield start, values
    for index, line in sorted(unnamed_used.items()):
        problems.append(
            RowProblem(
                line=header_line,
                field=None,
                value=None,
                message=f"column {index + 1} has no name in the header but holds values "
                f"(first on line {line}); name it ({_known_columns_text()}) or empty it",
                scope="header",
            )
        )


_IGNORED = ""
"""A header entry for a column reported as unknown or repeated: its cells are not read."""


def _read_header(cells: list[str], problems: list[RowProblem], line: int) -> list[str | None]:
    """The canonical name of each column; None for a column without a name."""
    header: list[str | None] = []
    given: dict[str, str] = {}
    for cell in cells:
        raw = cell.strip()
        name = raw.lower()
        if not name:
            header.append(None)
            continue
        canonical = COLUMN_ALIASES.get(name, name)
        if canonical not in KNOWN_COLUMNS:
            hint = ""
            if ";" in raw or "\t" in raw:
                hint = " (the file looks separated by ';' or tabs: save it comma-separated)"
            problems.append(
                RowProblem(
                    line=line,
                    field=raw,
                    value=raw,
                    message=f"unknown column {raw!r}; known columns: {_known_columns_text()}{hint}",
                    scope="header",
                )
            )
            header.append(_IGNORED)
            continue
        if canonical in given:
            problems.append(
                RowProblem(
                    line=line,
                    field=canonical,
                    value=raw,
                    message=f"column {canonical} is given twice, as {given[canonical]!r} "
                    f"and {raw!r}; keep one",
                    scope="header",
                )
            )
            header.append(_IGNORED)
            continue
        given[canonical] = raw
        header.append(canonical)
    for name in _REQUIRED:
        if name not in given:
            problems.append(
                RowProblem(
                    line=line,
                    field=name,
                    value=None,
                    message=f"no {name} column; every row needs {_REQUIRED_HINTS[name]}",
                    scope="header",
                )
            )
    return header


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers the keys written twice in it."""

    duplicates: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    obj.duplicates = [key for key, n in Counter(k for k, _ in pairs).items() if n > 1]
    return obj


def _parse_jsonl(
    lines: Iterable[str], problems: list[RowProblem]
) -> Iterator[tuple[int, dict[str, Any]]]:
    first = True
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        if first and line.strip().startswith("["):
            problems.append(
                RowProblem(
                    line=number,
                    value=_shown(line.strip()),
                    message="a JSON array is not JSON lines: write one object per line, "
                    'such as {"prompt": "...", "image": "https://..."}',
                    scope="manifest",
                )
            )
            return
        first = False
        try:
            value = json.loads(line, object_pairs_hook=_json_object)
        except RecursionError:
            problems.append(
                RowProblem(
                    line=number,
                    value=_shown(line.strip()),
                    message="JSON nested too deeply to read; a row is one flat object such as "
                    '{"prompt": "...", "image": "https://..."}',
                )
            )
            continue
        except json.JSONDecodeError as exc:
            problems.append(
                RowProblem(
                    line=number,
                    value=_shown(line.strip()),
                    message=f"not valid JSON ({exc.msg} at column {exc.colno}); write one "
                    "JSON object per line",
                )
            )
            continue
        if not isinstance(value, dict):
            problems.append(
                RowProblem(
                    line=number,
                    value=_shown(line.strip()),
                    message="each line must be a JSON object such as "
                    f'{{"prompt": "...", "image": "https://..."}}; got {_json_type(value)}',
                )
            )
            continue
        for key in getattr(value, "duplicates", []):
            problems.append(
                RowProblem(
                    line=number,
                    field=key,
                    value=_shown(value[key]),
                    message=f"key {key!r} is given twice in this object; keep one",
                )
            )
        yield number, dict(value)


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


# -- validation -----------------------------------------------------------------------------


def validate_rows(
    raw: Iterable[tuple[int, Mapping[str, Any]]],
    *,
    base_dir: Path | None = None,
    source: str = "<rows>",
    image_root: str | os.PathLike[str] | None = None,
) -> list[BatchRow]:
    """Check every row, and the rows together, before anything is paid.

    Each row is checked like a ``VideoRequest`` (empty values take the default), its image
    must be an http(s) URL, an ``s3://bucket/key`` URI or an existing local image file (a
    relative path is read from ``base_dir``, else the current directory, and stored
    absolute) that lies inside ``image_root``, else ``base_dir``, else the current directory,
    once symlinks are resolved: a row cannot name any file the worker can read. Then:
    no id twice, no two rows without an id asking for the same video, no two rows writing
    the same ``destination/filename``, and at least one row.

    Raises:
        KandinskyManifestError: listing every problem of every row, at once.
    """
    rows, problems = _validate(
        raw, base_dir=base_dir, known_missing=frozenset(), image_root=image_root
    )
    if problems:
        raise manifest_error(source, problems)
    return rows


def _validate(
    raw: Iterable[tuple[int, Mapping[str, Any]]],
    *,
    base_dir: Path | None,
    known_missing: AbstractSet[str],
    parse_problems: Sequence[RowProblem] = (),
    image_root: str | os.PathLike[str] | None = None,
    max_rows: int | None = None,
) -> tuple[list[BatchRow], list[RowProblem]]:
    problems: list[RowProblem] = []
    rows: list[BatchRow] = []
    ids: dict[str, int] = {}
    count = 0
    # The folder relative image paths are read from: resolved once, for the first of them.
    base = cache(lambda: (base_dir or Path.cwd()).resolve())
    root = cache(lambda: Path(image_root).resolve() if image_root is not None else base())
    for line, mapping in raw:
        count += 1
        if max_rows is not None and count > max_rows:
            problems.append(_too_many_rows(max_rows))
            break
        values, row_problems = _normalise(line, mapping)
        if not isinstance(mapping, Mapping):
            problems.extend(row_problems)
            continue
        row_id = _row_id(values.get("id"))
        if row_id is not None:
            if row_id in ids:
                row_problems.append(
                    RowProblem(
                        line=line,
                        field="id",
                        value=row_id,
                        message=f"id {row_id!r} is also used by line {ids[row_id]}; each row "
                        "needs its own id",
                    )
                )
            else:
                ids[row_id] = line
        if "image" in values:
            values["image"], image_problem = _resolve_image(line, values["image"], base, root)
            if image_problem is not None:
                row_problems.append(image_problem)
        try:
            row = BatchRow.model_validate({**values, "line": line})
        except ValidationError as exc:
            row_problems.extend(_from_validation(line, exc, known_missing))
        else:
            if not row_problems:
                rows.append(row)
        problems.extend(
            p.model_copy(update={"row_id": row_id}) if p.scope == "row" else p for p in row_problems
        )
    if count == 0 and not parse_problems:
        problems.append(
            RowProblem(
                line=None,
                message="the manifest has no rows: give at least one row with a prompt and "
                "an image",
                scope="manifest",
            )
        )
    problems.extend(_cross_row_problems(rows))
    return rows, problems


def _too_many_rows(max_rows: int) -> RowProblem:
    return RowProblem(
        line=None,
        message=f"the manifest has more than {max_rows} rows and was not read further; split "
        f"it into several batches, or raise max_rows (or {MAX_MANIFEST_ROWS_ENV})",
        scope="manifest",
    )


def _row_id(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


def _normalise(line: int, mapping: object) -> tuple[dict[str, Any], list[RowProblem]]:
    """Canonical keys; empty optional values dropped (they take the default)."""
    values: dict[str, Any] = {}
    given: dict[str, Any] = {}
    problems: list[RowProblem] = []
    if not isinstance(mapping, Mapping):
        message = f"a row must be a dict, VideoRequest or BatchRow; got {type(mapping).__name__}"
        return values, [RowProblem(line=line, value=_shown(mapping), message=message)]
    for key, value in mapping.items():
        name = key.strip().lower() if isinstance(key, str) else ""
        canonical = COLUMN_ALIASES.get(name, name)
        if canonical not in KNOWN_COLUMNS:
            problems.append(
                RowProblem(
                    line=line,
                    field=str(key),
                    value=_shown(value),
                    message=f"unknown field {key!r}; known fields: {_known_columns_text()}",
                )
            )
            continue
        if canonical in given:
            if value != mapping[given[canonical]]:
                problems.append(
                    RowProblem(
                        line=line,
                        field=canonical,
                        value=_shown(value),
                        message=f"{canonical} is given twice, as {given[canonical]!r} and "
                        f"{key!r}, with different values; keep one",
                    )
                )
            continue
        given[canonical] = key
        if canonical in _OPTIONAL and (
            value is None or (isinstance(value, str) and not value.strip())
        ):
            continue
        values[canonical] = value
    return values, problems


def _resolve_image(
    line: int, value: object, folder: Callable[[], Path], root: Callable[[], Path]
) -> tuple[object, RowProblem | None]:
    """A local image as an absolute path, with a problem if it is not an image file inside
    ``root`` (symlinks resolved)."""
    if not isinstance(value, str) or not value.strip():
        return value, None
    text = value.strip()
    if "://" in text or _image_kind(text) != "file":
        return value, None
    path = Path(text)
    base = folder()
    resolved = Path(os.path.abspath(path if path.is_absolute() else base / path))
    inside = root()
    real = Path(os.path.realpath(resolved))
    if not real.is_relative_to(inside):
        message = (
            f"image {_shown(value)!r} is outside {inside}, the folder local images are read "
            f"from (symlinks resolved): move the image into it, or name the folder that holds "
            f"the images with image_root"
        )
    elif not real.is_file():
        read_from = "" if path.is_absolute() else f" (relative paths are read from {base})"
        found = "is a folder" if real.is_dir() else "does not exist"
        message = f"image must be {_IMAGE_ALLOWED}; {resolved} {found}{read_from}"
    elif (kind := _file_image_kind(real)) is not None:
        message = f"image {resolved} {kind}: give a PNG, JPEG or WebP file"
    else:
        return str(real), None
    return value, RowProblem(line=line, field="image", value=_shown(value), message=message)


def _file_image_kind(path: Path) -> str | None:
    """None for an image file (by its magic bytes); else what it is, never its bytes."""
    try:
        with path.open("rb") as handle:
            head = handle.read(IMAGE_SNIFF_BYTES)
    except OSError as exc:
        return f"cannot be read ({type(exc).__name__})"
    if not head:
        return "is empty, not an image"
    if sniff_image_kind(head) is None:
        return "is not an image (its first bytes are no image format's)"
    return None


def _from_validation(
    line: int, exc: ValidationError, known_missing: AbstractSet[str]
) -> list[RowProblem]:
    problems: list[RowProblem] = []
    for error in exc.errors(include_url=False):
        location = error["loc"][0] if error["loc"] else None
        field = COLUMN_ALIASES.get(str(location), str(location)) if location is not None else None
        if error["type"] == "missing":
            if field in known_missing:
                continue  # reported once, on the header
            hint = _REQUIRED_HINTS.get(field or "", "a value")
            problems.append(
                RowProblem(line=line, field=field, message=f"{field} is required: {hint}")
            )
            continue
        value = error.get("input")
        message = str(error["msg"])
        if error["type"] != "kandinsky_parameter":
            message = f"{field} is not valid ({message}); got {_shown(value)!r}"
        problems.append(RowProblem(line=line, field=field, value=_shown(value), message=message))
    return problems


def _cross_row_problems(rows: list[BatchRow]) -> list[RowProblem]:
    problems: list[RowProblem] = []
    contents: dict[str, BatchRow] = {}
    targets: dict[str, BatchRow] = {}
    for row in rows:
        identical = False
        if row.id is None:
            digest = _content_sha256(row)
            first = contents.setdefault(digest, row)
            if first is not row:
                identical = True
                problems.append(
                    RowProblem(
                        line=row.line,
                        message=f"row is identical to line {first.line} (same prompt, image, "
                        "settings, filename and destination) and would pay for the same video "
                        "twice; remove one, or give the rows an id column to ask for two videos",
                    )
                )
        target = row.target
        if target is None:
            continue
        earlier = targets.setdefault(target, row)
        if earlier is not row and not identical:
            problems.append(
                RowProblem(
                    line=row.line,
                    row_id=row.id,
                    field="filename",
                    value=row.filename,
                    message=f"line {earlier.line} already writes {target!r}; give each row its "
                    "own filename (or destination)",
                )
            )
    return problems


# -- loading --------------------------------------------------------------------------------


class Manifest(BaseModel):
    """The validated rows of a batch and where they came from."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(
        description="Stable identity of the manifest: the absolute path of a local file, "
        "s3://bucket/key, <block-type-slug>/<block-name>/<path> for a block, or 'rows' for "
        "rows given in memory."
    )
    rows: list[BatchRow] = Field(description="The rows, in manifest order, all valid.")
    digest: str = Field(description="Hex SHA-256 of the canonical rows (ids and content).")

    def __repr__(self) -> str:
        # Short: a manifest may hold 100,000 rows, and asyncio or a log may repr it.
        rows = f"<{len(self.rows)} rows>"
        return f"Manifest(source={self.source!r}, rows={rows}, digest={self.digest!r})"


async def load_manifest(
    manifest: str | os.PathLike[str] | Sequence[VideoRequest | BatchRow | Mapping[str, Any]],
    *,
    s3_bucket: Any | None = None,
    format: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    max_rows: int | None = None,
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
) -> Manifest:
    """Read and validate a whole manifest; one error lists every problem, nothing is paid.

    Args:
        manifest: A local CSV or JSONL file; ``s3://bucket/key`` (read with ``s3_bucket``'s
            credentials); ``<block-type-slug>/<block-name>/<path>``, a file in a storage
            block such as ``local-file-system/manifests/2026-11/catalogue.csv``; or rows in
            memory: dicts, ``VideoRequest`` or ``BatchRow`` objects (line = index + 1).
        s3_bucket: A prefect-aws ``S3Bucket`` whose credentials read an ``s3://`` manifest
            (its bucket may differ from the block's ``bucket_name``).
        format: ``"csv"`` or ``"jsonl"``; by default taken from the file's suffix.
        image_root: The folder local images must lie in (symlinks resolved). By default the
            manifest's own folder, or the current directory for rows in memory: an image
            anywhere else (``/etc/passwd``, ``~/.ssh/id_rsa``, ``../../x``) is a row problem.
        max_rows: The most rows read; a manifest with more is refused (reading stops there,
            so memory stays bounded). None takes ``KANDINSKY_MAX_MANIFEST_ROWS``, else
            100,000.
        max_line_chars: The longest line read; a longer one is a row problem.

    Raises:
        KandinskyManifestError: the manifest cannot be read, or has invalid rows.
        ValueError: an ``s3://`` manifest without ``s3_bucket``, or an unknown format.
    """
    limit = max_rows_default() if max_rows is None else max_rows
    if limit < 1 or max_line_chars < 1:
        raise ValueError(
            f"max_rows and max_line_chars must be 1 or more; got {max_rows}, {max_line_chars}"
        )
    parse_problems: list[RowProblem] = []
    check = partial(_validate, known_missing=set(), image_root=image_root, max_rows=limit)
    if isinstance(manifest, (str, os.PathLike)):
        name = os.fspath(manifest)
        chosen = detect_format(name.strip(), format)
        source, opener, base_dir = await open_manifest(name, s3_bucket)
        # Read, parsed and validated as a stream, in a worker thread (validation looks at
        # every local image file): at most max_rows rows are held, never the whole text.
        rows, problems = await anyio.to_thread.run_sync(
            partial(
                _read_rows,
                opener,
                chosen,
                partial(check, base_dir=base_dir),
                parse_problems,
                max_line_chars,
            )
        )
    else:
        source = "rows"
        parsed = ((index, _item_values(item)) for index, item in enumerate(manifest, start=1))
        rows, problems = await anyio.to_thread.run_sync(partial(check, parsed, base_dir=None))
    if parse_problems or problems:
        raise manifest_error(source, [*parse_problems, *problems])
    return _manifest(source, rows)


def max_rows_default() -> int:
    """The row limit of a manifest: :data:`MAX_MANIFEST_ROWS_ENV` when set, else
    :data:`DEFAULT_MAX_MANIFEST_ROWS`."""
    value = os.environ.get(MAX_MANIFEST_ROWS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_MANIFEST_ROWS
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"{MAX_MANIFEST_ROWS_ENV} must be a whole number, 1 or more; got {value!r}"
        )
    return int(value)


def _read_rows(
    opener: LineOpener,
    format: ManifestFormat,
    check: Callable[..., tuple[list[BatchRow], list[RowProblem]]],
    parse_problems: list[RowProblem],
    max_line_chars: int,
) -> tuple[list[BatchRow], list[RowProblem]]:
    """Every row of the opened manifest, validated as it is read."""

    def too_long(line: int) -> None:
        parse_problems.append(
            RowProblem(
                line=line,
                message=f"the line is longer than {max_line_chars} characters and was not "
                "read; shorten it, or pass a larger max_line_chars",
            )
        )

    missing: set[str] = set()
    with opener(_NEWLINE[format]) as handle:
        lines = bounded_lines(handle, max_line_chars, too_long)
        return check(
            _rows_of(lines, format, parse_problems, missing),
            known_missing=missing,
            parse_problems=parse_problems,
        )


def _manifest(source: str, rows: list[BatchRow]) -> Manifest:
    # The SHA-256 of the canonical JSON list of the rows, hashed row by row: the same bytes
    # as _canonical(list) without holding them all at once.
    digest = hashlib.sha256(b"[")
    for index, row in enumerate(rows):
        digest.update(b"," if index else b"")
        digest.update(_canonical({"id": row.id, **row.content()}))
    digest.update(b"]")
    return Manifest(source=source, rows=rows, digest=digest.hexdigest())


def _item_values(item: object) -> Any:
    """The fields of a row given in memory; anything else is reported by _normalise."""
    if isinstance(item, BatchRow):
        return item.model_dump(exclude={"line"})
    if isinstance(item, VideoRequest):
        values = item.model_dump()
        values["image"] = values.pop("image_url")
        return values
    return item


# -- keys -----------------------------------------------------------------------------------


def row_key(batch_id: str, row: BatchRow) -> str:
    """The key of a row across runs of a batch: the same key is never paid twice.

    ``{batch_id}#{id}`` for a row with an id; ``{batch_id}#sha256:<hex>`` of the row's
    content (prompt, image, resolution, duration, steps, acceleration, filename,
    destination) otherwise, so inserting a row above another does not change its key.
    """
    if row.id is not None:
        return f"{batch_id}#{row.id}"
    return f"{batch_id}#sha256:{_content_sha256(row)}"


def default_batch_id(manifest: Manifest) -> str:
    """The batch id of a manifest when none is given: its source."""
    return manifest.source
