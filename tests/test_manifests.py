"""Manifests: every bad row reported at once, keys that survive edits, budgets before paying."""

from __future__ import annotations

import json
import pickle
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.core import Block
from prefect.filesystems import LocalFileSystem

from prefect_kandinsky.assets import sample_image_bytes
from prefect_kandinsky.batch.manifests import (
    BatchRow,
    Manifest,
    default_batch_id,
    detect_format,
    load_manifest,
    parse_manifest,
    row_key,
    validate_rows,
)
from prefect_kandinsky.batch.problems import RowProblem, manifest_error
from prefect_kandinsky.gateway.exceptions import KandinskyBudgetError, KandinskyManifestError
from prefect_kandinsky.gateway.models import VideoRequest
from prefect_kandinsky.gateway.prices import CostEstimate, check_budget, estimate_batch_cost

URL = "https://example.com/images"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _problems(error: pytest.ExceptionInfo[KandinskyManifestError]) -> list[tuple[Any, ...]]:
    return [(p.line, p.field, p.value) for p in error.value.problems]


def _rows(*prompts: str, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"prompt": prompt, "image": f"{URL}/{i}.png", **extra} for i, prompt in enumerate(prompts)
    ]


# -- reading and validating ------------------------------------------------------------------


async def test_local_images_outside_the_manifest_folder_are_row_problems(tmp_path: Path) -> None:
    """Absolute, ~, ../ and symlinked paths out of the manifest's folder, and non-images, are
    refused with the other rows' problems, and no file's bytes are shown."""
    folder = tmp_path / "batch"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "ok.png").write_bytes(sample_image_bytes())
    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (folder / "images" / "link.png").symlink_to(secret)
    (folder / "images" / "key.png").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    manifest = _write(
        folder / "rows.csv",
        "id,prompt,image\n"
        "a,A,images/ok.png\n"  # line 2: fine
        "b,B,/etc/passwd\n"
        "c,C,~/.ssh/id_rsa\n"
        "d,D,../../../../etc/hostname\n"
        "e,E,../private/secret.png\n"
        "f,F,images/link.png\n"
        "g,G,images/key.png\n",
    )

    with pytest.raises(KandinskyManifestError, match="6 problems in 6 rows") as caught:
        await load_manifest(manifest)

    assert [3, 4, 5, 6, 7, 8] == [p.line for p in caught.value.problems]
    messages = [p.message for p in caught.value.problems]
    assert all(f"is outside {folder}" in m for m in (messages[0], messages[3], messages[4]))
    assert "does not exist" in messages[1], "~ is not expanded: it is a name in the folder"
    assert "is not an image (its first bytes are no image format's)" in messages[5]
    assert "root:x" not in str(caught.value)
    assert "BEGIN" not in str(caught.value)


async def test_image_root_names_the_folder_local_images_may_come_from(tmp_path: Path) -> None:
    """A caller may name another folder for local images; the row then keeps its real path."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "mug.png").write_bytes(sample_image_bytes())
    manifest = _write(tmp_path / "batch" / "rows.csv", f"prompt,image\nA,{shared}/mug.png\n")

    with pytest.raises(KandinskyManifestError, match="is outside"):
        await load_manifest(manifest)
    loaded = await load_manifest(manifest, image_root=shared)

    assert str(shared / "mug.png") == loaded.rows[0].image


async def test_rows_in_memory_keep_local_images_inside_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows given as a parameter read local images from the current directory only."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")

    with pytest.raises(KandinskyManifestError, match=r"line 1: image: image '/etc/hostname' is "):
        await load_manifest([{"prompt": "A", "image": "/etc/hostname"}])


async def test_csv_reports_every_bad_row_in_one_error(tmp_path: Path) -> None:
    """A CSV with five kinds of mistakes raises one error naming each line, field and value."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "mug.png").write_bytes(sample_image_bytes())
    manifest = _write(
        tmp_path / "catalogue.csv",
        "id,prompt,image,resolution,duration,resolutoin\n"  # line 1
        f"sku-1,The mug turns,{URL}/mug.png,512P,5s,\n"  # line 2
        f"sku-2,The lamp glows,{URL}/lamp.png,720P,5s,\n"  # line 3: resolution
        "sku-3,The cup steams,images/mug.png,1024P,3,\n"  # line 4: fine, local image
        f"sku-4,The cat yawns,{URL}/cat.png,512P,11s,\n"  # line 5: duration
        f"sku-5,,{URL}/dog.png,,,\n"  # line 6: empty prompt
        f"sku-6,The bird sings,{URL}/bird.png,256P,1,\n"  # line 7: fine
        "sku-7,The fish swims,images/fish.png,,,\n",  # line 8: no such file
    )

    with pytest.raises(KandinskyManifestError, match=r"5 problems in 4 rows; nothing") as error:
        await load_manifest(manifest)

    assert [
        (1, "resolutoin", "resolutoin"),
        (3, "resolution", "720P"),
        (5, "duration", "11s"),
        (6, "prompt", ""),
        (8, "image", "images/fish.png"),
    ] == _problems(error)
    message = str(error.value)
    assert message.startswith(f"{manifest}: 5 problems in 4 rows; nothing was submitted:\n")
    assert (
        "  line 1 (header): resolutoin: unknown column 'resolutoin'; known columns: id, prompt, "
        "image (or image_url), resolution, duration, num_inference_steps (or steps), "
        "acceleration, filename, destination"
    ) in message
    assert (
        "  line 3 (id sku-2): resolution: resolution must be one of 256P, 512P, 1024P; got '720P'"
    ) in message
    assert "  line 5 (id sku-4): duration: duration must be whole seconds from 1s to 10s" in message
    assert "  line 6 (id sku-5): prompt: prompt must be a non-empty description" in message
    assert (
        f"  line 8 (id sku-7): image: image must be an http(s) URL, an s3://bucket/key URI or an "
        f"existing local file; {tmp_path / 'images' / 'fish.png'} does not exist (relative paths "
        f"are read from {tmp_path})"
    ) in message
    assert manifest.resolve() == Path(error.value.source)


async def test_valid_csv_loads_with_defaults_for_empty_cells(tmp_path: Path) -> None:
    """Empty cells take the request defaults; the source is the manifest's absolute path."""
    manifest = _write(
        tmp_path / "run.csv",
        "prompt,image,resolution,duration,num_inference_steps,acceleration\n"
        f"The mug turns,{URL}/mug.png,,,,\n",
    )

    loaded = await load_manifest(manifest)

    assert str(manifest.resolve()) == loaded.source
    row = loaded.rows[0]
    assert ("512P", "5s", 28, "regular") == (
        row.resolution,
        row.duration,
        row.num_inference_steps,
        row.acceleration,
    )
    assert (2, None, "url") == (row.line, row.id, row.image_kind)


async def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    """An id used twice is reported on the second row, naming the first row's line."""
    manifest = _write(
        tmp_path / "run.csv",
        f"id,prompt,image\nsku-1,A,{URL}/a.png\nsku-2,B,{URL}/b.png\nsku-1,C,{URL}/c.png\n",
    )

    with pytest.raises(
        KandinskyManifestError,
        match=r"line 4 \(id sku-1\): id: id 'sku-1' is also used by line 2; each row needs its "
        r"own id",
    ) as error:
        await load_manifest(manifest)

    assert [(4, "id", "sku-1")] == _problems(error)


async def test_identical_rows_without_id_name_both_lines_and_suggest_an_id(
    tmp_path: Path,
) -> None:
    """Two rows asking for the same video without ids are refused, suggesting an id column."""
    manifest = _write(
        tmp_path / "run.jsonl",
        json.dumps({"prompt": "A", "image": f"{URL}/a.png"})
        + "\n"
        + json.dumps({"prompt": "B", "image": f"{URL}/b.png"})
        + "\n"
        + json.dumps({"prompt": "A", "image_url": f"{URL}/a.png", "duration": "5s"})
        + "\n",
    )

    with pytest.raises(
        KandinskyManifestError,
        match=r"line 3: row is identical to line 1 .* give the rows an id column to ask for "
        r"two videos",
    ) as error:
        await load_manifest(manifest)

    assert [(3, None, None)] == _problems(error)


async def test_identical_content_with_different_ids_asks_for_two_videos() -> None:
    """Rows with the same content but their own ids are two videos, and both are kept."""
    rows = [
        {"id": "take-1", "prompt": "A", "image": f"{URL}/a.png"},
        {"id": "take-2", "prompt": "A", "image": f"{URL}/a.png"},
    ]

    loaded = await load_manifest(rows)

    assert ["take-1", "take-2"] == [row.id for row in loaded.rows]


async def test_two_rows_writing_the_same_file_are_refused() -> None:
    """Rows whose destination and filename name the same file are refused, naming both lines."""
    rows = [
        {"id": "a", "prompt": "A", "image": f"{URL}/a.png", "filename": "clips/x.mp4"},
        {"id": "b", "prompt": "B", "image": f"{URL}/b.png", "destination": "clips/"},
        {
            "id": "c",
            "prompt": "C",
            "image": f"{URL}/c.png",
            "filename": "x.mp4",
            "destination": "clips",
        },
    ]

    with pytest.raises(
        KandinskyManifestError,
        match=r"line 3 \(id c\): filename: line 1 already writes 'clips/x.mp4'",
    ) as error:
        await load_manifest(rows)

    assert [(3, "filename", "x.mp4")] == _problems(error)


async def test_quoted_multiline_prompt_keeps_line_numbers(tmp_path: Path) -> None:
    """A prompt spanning three lines starts its row's line; later rows keep their file line."""
    manifest = _write(
        tmp_path / "run.csv",
        "prompt,image,resolution\n"
        f'"The mug turns\nslowly,\non the table",{URL}/mug.png,512P\n'
        f"The lamp glows,{URL}/lamp.png,720P\n",
    )

    with pytest.raises(KandinskyManifestError) as error:
        await load_manifest(manifest)

    assert [(5, "resolution", "720P")] == _problems(error)
    rows = parse_manifest(manifest.read_text(), format="csv")
    assert [2, 5] == [line for line, _ in rows]
    assert "The mug turns\nslowly,\non the table" == rows[0][1]["prompt"]


async def test_jsonl_broken_line_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    """Broken JSON, a non-object line and a bad row are all reported; blank lines are skipped."""
    manifest = _write(
        tmp_path / "run.jsonl",
        json.dumps({"prompt": "A", "image": f"{URL}/a.png"})
        + "\n"
        + '{"prompt": "B", "image": }\n'
        + "\n"
        + '["not", "an", "object"]\n'
        + json.dumps({"prompt": "C", "image": f"{URL}/c.png", "steps": 99})
        + "\n",
    )

    with pytest.raises(KandinskyManifestError, match=r"3 problems in 3 rows") as error:
        await load_manifest(manifest)

    assert [2, 4, 5] == [p.line for p in error.value.problems]
    broken, not_object, steps = error.value.problems
    assert "not valid JSON (Expecting value at column 26); write one JSON object per line" == (
        broken.message
    )
    assert not_object.message.endswith("got an array")
    assert ("num_inference_steps", 99) == (steps.field, steps.value)
    assert "num_inference_steps must be an integer from 20 to 50; got 99" == steps.message


def test_parse_manifest_raises_for_unreadable_lines_only() -> None:
    """parse_manifest returns raw rows, and raises naming every line that cannot be read."""
    text = '{"prompt": "A"}\nnot json\n{"prompt": "B"}\n42\n'

    with pytest.raises(KandinskyManifestError, match=r"^m\.jsonl: 2 problems in 2 rows") as error:
        parse_manifest(text, format="jsonl", source="m.jsonl")

    assert [2, 4] == [p.line for p in error.value.problems]
    assert [(1, {"prompt": "A"})] == parse_manifest('{"prompt": "A"}\n', format="jsonl")


def test_broken_csv_quoting_and_extra_cells_do_not_hide_later_rows() -> None:
    """A broken quote and a row with an extra cell are reported; the rows after them are read."""
    text = 'prompt,image\nA,a.png,extra\n"B"b,b.png\n"C\nc",c.png\n'

    with pytest.raises(KandinskyManifestError) as error:
        parse_manifest(text, format="csv")

    assert [
        (2, "row has 3 cells but the header has 2 columns; quote cells that hold a comma"),
        (3, "not valid CSV (',' expected after '\"'); check the quotes of this row"),
    ] == [(p.line, p.message) for p in error.value.problems]


def test_a_key_written_twice_in_a_json_line_is_refused() -> None:
    """JSON keeps the last of two equal keys silently; the manifest refuses the line instead."""
    text = (
        '{"prompt": "A", "image": "https://x/a.png", "resolution": "1024P", "resolution": "256P"}'
    )

    with pytest.raises(
        KandinskyManifestError,
        match=r"line 1: resolution: key 'resolution' is given twice in this object; keep one",
    ):
        parse_manifest(text, format="jsonl")


def test_a_json_array_is_explained_once() -> None:
    """A pretty-printed JSON array is one problem saying to write one object per line."""
    text = '[\n  {"prompt": "A", "image": "https://x/a.png"}\n]\n'

    with pytest.raises(KandinskyManifestError, match=r"a JSON array is not JSON lines") as error:
        parse_manifest(text, format="jsonl")

    assert 1 == len(error.value.problems)


async def test_bom_is_ignored(tmp_path: Path) -> None:
    """A UTF-8 BOM written by spreadsheet tools does not turn the first column unknown."""
    manifest = tmp_path / "excel.csv"
    manifest.write_bytes(f"\ufeffid,prompt,image\nsku-1,Café au lait,{URL}/c.png\n".encode())

    loaded = await load_manifest(manifest)

    assert [("sku-1", "Café au lait")] == [(row.id, row.prompt) for row in loaded.rows]


async def test_steps_alias_and_case_insensitive_trimmed_headers(tmp_path: Path) -> None:
    """``Steps``, `` Image_URL `` and ``PROMPT`` name the documented columns."""
    manifest = _write(
        tmp_path / "run.csv",
        f" PROMPT , Image_URL ,Steps,Resolution\nThe mug turns, {URL}/m.png ,40,1024p\n",
    )

    loaded = await load_manifest(manifest)

    row = loaded.rows[0]
    assert (40, "1024P", f"{URL}/m.png") == (row.num_inference_steps, row.resolution, row.image)


async def test_a_column_given_twice_is_refused(tmp_path: Path) -> None:
    """``steps`` and ``num_inference_steps`` together are one header problem, not a guess."""
    manifest = _write(
        tmp_path / "run.csv",
        f"prompt,image,steps,num_inference_steps\nA,{URL}/a.png,30,40\n",
    )

    with pytest.raises(
        KandinskyManifestError,
        match=r"line 1 \(header\): num_inference_steps: column num_inference_steps is given "
        r"twice, as 'steps' and 'num_inference_steps'; keep one",
    ):
        await load_manifest(manifest)


async def test_a_missing_required_column_is_reported_once(tmp_path: Path) -> None:
    """A CSV without an image column gets one header problem, not one per row."""
    manifest = _write(tmp_path / "run.csv", "prompt,imgae\nA,a.png\nB,b.png\nC,c.png\n")

    with pytest.raises(KandinskyManifestError, match=r"2 problems; nothing was submitted") as error:
        await load_manifest(manifest)

    assert [(1, "imgae", "imgae"), (1, "image", None)] == _problems(error)
    assert "no image column; every row needs an http(s) URL" in str(error.value)


async def test_durations_written_5s_or_5(tmp_path: Path) -> None:
    """``"5s"``, ``"5"`` and ``5`` are all five seconds, in CSV and in JSONL."""
    csv_manifest = _write(
        tmp_path / "run.csv", f"id,prompt,image,duration\na,A,{URL}/a.png,5s\nb,B,{URL}/b.png,5\n"
    )
    jsonl_manifest = _write(
        tmp_path / "run.jsonl",
        json.dumps({"prompt": "A", "image": f"{URL}/a.png", "duration": 5}) + "\n",
    )

    rows = (await load_manifest(csv_manifest)).rows + (await load_manifest(jsonl_manifest)).rows

    assert [("5s", 5)] * 3 == [(row.duration, row.duration_seconds) for row in rows]


async def test_relative_image_paths_resolve_against_the_manifest_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``images/mug.png`` is read next to the manifest, not from the current directory."""
    image = tmp_path / "batch" / "images" / "mug.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(sample_image_bytes())
    manifest = _write(tmp_path / "batch" / "run.csv", "prompt,image\nA,images/mug.png\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    loaded = await load_manifest(manifest)

    assert (str(image), "file") == (loaded.rows[0].image, loaded.rows[0].image_kind)


async def test_in_memory_rows_number_lines_from_one() -> None:
    """Dicts, VideoRequests and BatchRows load as rows numbered index + 1, from source 'rows'."""
    request = VideoRequest(prompt="B", image_url=f"{URL}/b.png", resolution="1024P", duration=3)
    given = BatchRow(line=40, id="c", prompt="C", image="s3://bucket/c.png")

    loaded = await load_manifest(
        [{"ID": "a", "Prompt": "A", "image_url": f"{URL}/a.png"}, request, given]
    )

    assert "rows" == loaded.source
    assert [(1, "a", "url"), (2, None, "url"), (3, "c", "s3")] == [
        (row.line, row.id, row.image_kind) for row in loaded.rows
    ]
    assert request == loaded.rows[1].request(request.image_url)


async def test_in_memory_rows_report_unknown_fields_and_bad_values() -> None:
    """A typo in a dict key is refused on its row instead of falling back to the default."""
    rows: list[Any] = [
        {"prompt": "A", "image": f"{URL}/a.png", "resolutoin": "1024P"},
        {"prompt": "B", "image": "ftp://example.com/b.png", "acceleration": "turbo"},
        "not a row",
    ]

    with pytest.raises(KandinskyManifestError, match=r"^rows: 4 problems in 3 rows") as error:
        await load_manifest(rows)

    assert [
        (1, "resolutoin", "1024P"),
        (2, "image", "ftp://example.com/b.png"),
        (2, "acceleration", "turbo"),
        (3, None, "not a row"),
    ] == _problems(error)
    assert "unknown field 'resolutoin'; known fields: id, prompt," in str(error.value)
    assert "acceleration must be one of regular, fast, ultra_fast; got 'turbo'" in str(error.value)


async def test_an_empty_manifest_is_refused(tmp_path: Path) -> None:
    """A header without rows is an error: a batch of nothing is a mistake."""
    manifest = _write(tmp_path / "run.csv", "prompt,image\n\n")

    with pytest.raises(
        KandinskyManifestError,
        match=r"1 problem; nothing was submitted:\n  manifest: the manifest has no rows",
    ):
        await load_manifest(manifest)


async def test_a_missing_manifest_names_the_forms_accepted(tmp_path: Path) -> None:
    """A path that is no file says which kinds of manifest are accepted."""
    missing = tmp_path / "nope.csv"

    with pytest.raises(
        KandinskyManifestError,
        match=rf"Could not read manifest {re.escape(str(missing))}: .* does not exist: give a CSV "
        r"or JSONL file, an s3://bucket/key URI or <block-type-slug>/<block-name>/<path>",
    ):
        await load_manifest(missing)


def test_format_comes_from_the_suffix_unless_given() -> None:
    """.csv is CSV, .jsonl/.ndjson/.json are JSON lines, format= wins, and others are refused."""
    assert ["csv", "jsonl", "jsonl", "jsonl", "csv"] == [
        detect_format("a.CSV"),
        detect_format("s3://b/a.jsonl"),
        detect_format("a.ndjson"),
        detect_format("a.json"),
        detect_format("a.txt", "csv"),
    ]
    with pytest.raises(ValueError, match=r"pass format='csv' or format='jsonl'"):
        detect_format("manifest.txt")
    with pytest.raises(ValueError, match=r"format must be 'csv' or 'jsonl'; got 'xml'"):
        detect_format("a.csv", "xml")


async def test_more_than_fifty_problems_are_counted(tmp_path: Path) -> None:
    """The message lists 50 problems and counts the rest; ``problems`` holds them all."""
    lines = "".join(f"P{i},{URL}/{i}.png,720P\n" for i in range(62))
    manifest = _write(tmp_path / "run.csv", f"prompt,image,resolution\n{lines}")

    with pytest.raises(KandinskyManifestError, match=r"\n  \.\.\. and 12 more$") as error:
        await load_manifest(manifest)

    assert 62 == len(error.value.problems)
    assert 50 == str(error.value).count("resolution must be one of")


def test_filename_and_destination_must_stay_inside_the_destination() -> None:
    """``..`` and absolute paths are refused in filename and destination, naming the rule."""
    rows = [
        (1, {"prompt": "A", "image": f"{URL}/a.png", "filename": "../a.mp4"}),
        (2, {"prompt": "B", "image": f"{URL}/b.png", "destination": "/srv/videos"}),
        (3, {"prompt": "C", "image": "s3://bucket-only"}),
    ]

    with pytest.raises(KandinskyManifestError) as error:
        validate_rows(rows)

    assert [(1, "filename"), (2, "destination"), (3, "image")] == [
        (p.line, p.field) for p in error.value.problems
    ]
    messages = [p.message for p in error.value.problems]
    assert messages[0].startswith("filename must be a relative file name such as 'clip.mp4'")
    assert messages[1].startswith("destination must be a relative folder such as 'catalogue'")
    assert (
        "image must be an s3://bucket/key URI naming one object; got 's3://bucket-only'"
        == (messages[2])
    )


def test_secrets_in_image_urls_are_not_shown() -> None:
    """A presigned image URL that fails its check is shown with its signature redacted."""
    rows = [(1, {"prompt": "", "image": "https:///a.png?X-Amz-Signature=s3cr3t"})]

    with pytest.raises(KandinskyManifestError) as error:
        validate_rows(rows)

    assert "s3cr3t" not in str(error.value)
    assert "s3cr3t" not in repr(error.value.problems)


def test_problem_text_names_line_id_field_and_message() -> None:
    """A problem reads ``line 7 (id sku-123): resolution: ...``."""
    problem = RowProblem(
        line=7,
        row_id="sku-123",
        field="resolution",
        value="720P",
        message="resolution must be one of 256P, 512P, 1024P; got '720P'",
    )

    assert (
        "line 7 (id sku-123): resolution: resolution must be one of 256P, 512P, 1024P; got '720P'"
        == str(problem)
    )


def test_manifest_error_sorts_and_counts_rows() -> None:
    """``manifest_error`` lists problems by line and counts their rows."""
    problems = [
        RowProblem(line=9, row_id="b", field="image", value="x.png", message="no such image"),
        RowProblem(line=3, row_id="a", field="image", value="y.png", message="no such image"),
        RowProblem(line=3, row_id="a", field="prompt", value="", message="empty prompt"),
    ]

    error = manifest_error("run.csv", problems)

    assert (
        "run.csv: 3 problems in 2 rows; nothing was submitted:\n"
        "  line 3 (id a): prompt: empty prompt\n"
        "  line 3 (id a): image: no such image\n"
        "  line 9 (id b): image: no such image"
    ) == str(error)
    assert ("run.csv", [3, 3, 9]) == (error.source, [p.line for p in error.problems])


async def test_block_manifest_is_read_through_the_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``local-file-system/<block>/<path>`` loads the block and reads the file through it."""
    folder = tmp_path / "2026-11"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "mug.png").write_bytes(sample_image_bytes())
    _write(folder / "catalogue.csv", "id,prompt,image\nsku-1,A,images/mug.png\n")
    loaded_names: list[str] = []

    async def aload(cls: type[Block], /, name: str, **kwargs: Any) -> Block:
        loaded_names.append(name)
        return LocalFileSystem(basepath=str(tmp_path))

    monkeypatch.setattr(Block, "aload", classmethod(aload))
    monkeypatch.chdir(tmp_path)

    loaded = await load_manifest("local-file-system/manifests/2026-11/catalogue.csv")

    assert ["local-file-system/manifests"] == loaded_names
    assert "local-file-system/manifests/2026-11/catalogue.csv" == loaded.source
    assert str(folder / "images" / "mug.png") == loaded.rows[0].image


async def test_a_local_file_wins_over_a_block_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path that exists locally is read from disk even if it starts like a block path."""
    _write(
        tmp_path / "local-file-system" / "manifests" / "run.csv", f"prompt,image\nA,{URL}/a.png\n"
    )

    async def aload(cls: type[Block], /, name: str, **kwargs: Any) -> Block:
        raise AssertionError("no block should be loaded")

    monkeypatch.setattr(Block, "aload", classmethod(aload))
    monkeypatch.chdir(tmp_path)

    loaded = await load_manifest("local-file-system/manifests/run.csv")

    assert str(tmp_path / "local-file-system" / "manifests" / "run.csv") == loaded.source


async def test_a_missing_block_names_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block that cannot be loaded is reported by name, with nothing submitted."""

    async def aload(cls: type[Block], /, name: str, **kwargs: Any) -> Block:
        raise ValueError(f"Unable to find block document named {name}")

    monkeypatch.setattr(Block, "aload", classmethod(aload))

    with pytest.raises(
        KandinskyManifestError,
        match=r"Could not read manifest s3-bucket/catalogue/run\.jsonl: could not load block "
        r"s3-bucket/catalogue",
    ):
        await load_manifest("s3-bucket/catalogue/run.jsonl")


async def test_s3_manifest_is_read_with_the_blocks_credentials(
    s3_bucket: Any, s3_client: Any
) -> None:
    """An ``s3://`` manifest in another bucket is read with the given block's credentials."""
    other = f"{s3_bucket.bucket_name}-manifests"
    s3_client.create_bucket(Bucket=other)
    body = "id,prompt,image\nsku-1,A,s3://images/mug.png\n"
    s3_client.put_object(Bucket=other, Key="2026/run.csv", Body=body.encode())

    loaded = await load_manifest(f"s3://{other}/2026/run.csv", s3_bucket=s3_bucket)

    assert f"s3://{other}/2026/run.csv" == loaded.source
    assert [("sku-1", "s3")] == [(row.id, row.image_kind) for row in loaded.rows]


async def test_s3_manifest_that_does_not_exist(s3_bucket: Any) -> None:
    """A missing S3 object is a manifest error naming the URI and S3's answer."""
    with pytest.raises(
        KandinskyManifestError,
        match=rf"Could not read manifest s3://{s3_bucket.bucket_name}/missing\.csv: NoSuchKey",
    ):
        await load_manifest(f"s3://{s3_bucket.bucket_name}/missing.csv", s3_bucket=s3_bucket)


async def test_s3_manifest_without_a_block_says_to_pass_one() -> None:
    """Without ``s3_bucket``, an ``s3://`` manifest is refused saying what to pass."""
    with pytest.raises(
        ValueError, match=r"s3://b/run\.csv is on S3: pass input_bucket.*--input-bucket"
    ):
        await load_manifest("s3://b/run.csv")


# -- keys ------------------------------------------------------------------------------------


async def test_row_keys_survive_inserting_a_row_and_differ_by_content() -> None:
    """A row's key ignores its line, follows its content, and uses the id when there is one."""
    before = await load_manifest(_rows("A", "B"))
    after = await load_manifest([{"prompt": "New", "image": f"{URL}/n.png"}, *_rows("A", "B")])
    changed = await load_manifest(_rows("A", "B", resolution="1024P"))
    with_id = BatchRow(line=9, id="sku-1", prompt="A", image=f"{URL}/0.png")

    keys_before = [row_key("batch", row) for row in before.rows]
    assert keys_before == [row_key("batch", row) for row in after.rows[1:]]
    assert keys_before[0] != keys_before[1]
    assert set(keys_before).isdisjoint(row_key("batch", row) for row in changed.rows)
    assert re.fullmatch(r"batch#sha256:[0-9a-f]{64}", keys_before[0])
    assert "batch#sku-1" == row_key("batch", with_id)


async def test_default_batch_id_and_digest() -> None:
    """The default batch id is the source; the digest follows the rows' content."""
    first = await load_manifest(_rows("A", "B"))
    again = await load_manifest(_rows("A", "B"))
    other = await load_manifest(_rows("A", "C"))

    assert "rows" == default_batch_id(first)
    assert first.digest == again.digest
    assert first.digest != other.digest
    assert isinstance(first, Manifest)


def test_batch_row_accepts_image_url_and_prices_like_a_request() -> None:
    """``image_url`` is read as ``image``; the price is the documented one, None for 256P."""
    row = BatchRow.model_validate(
        {
            "line": 1,
            "prompt": "A",
            "image_url": f"{URL}/a.png",
            "resolution": "1024P",
            "duration": 3,
        }
    )
    low = BatchRow(line=2, prompt="A", image=f"{URL}/a.png", resolution="256P")

    assert (f"{URL}/a.png", Decimal("0.36"), None) == (
        row.image,
        row.estimated_cost_usd,
        low.estimated_cost_usd,
    )


# -- budget ----------------------------------------------------------------------------------


def _priced_rows() -> list[BatchRow]:
    """40 x 512P 5s ($8.00) + 12 x 1024P 3s ($4.32) + 2 x 512P 1s ($0.08) = $12.40."""
    specs = [("512P", 5)] * 40 + [("1024P", 3)] * 12 + [("512P", 1)] * 2
    return [
        BatchRow(line=i + 2, id=f"r{i}", prompt="A", image=f"{URL}/a.png", resolution=r, duration=d)
        for i, (r, d) in enumerate(specs)
    ]


def test_a_batch_over_budget_is_refused_with_the_breakdown() -> None:
    """$12.40 against max_cost_usd 10 is refused, listing each resolution and duration."""
    estimate = estimate_batch_cost(_priced_rows())

    with pytest.raises(KandinskyBudgetError) as error:
        check_budget(estimate, 10)

    assert (
        "The batch would cost $12.40 by the documented prices, over max_cost_usd $10.00; "
        "nothing was submitted:\n"
        "  512P 5s: 40 rows x $0.20 = $8.00\n"
        "  1024P 3s: 12 rows x $0.36 = $4.32\n"
        "  512P 1s: 2 rows x $0.04 = $0.08\n"
        "Raise max_cost_usd, or remove rows, to run it."
    ) == str(error.value)
    assert (Decimal("12.40"), Decimal(10), Decimal(0)) == (
        error.value.estimate.total_usd,
        error.value.max_cost_usd,
        error.value.already_charged_usd,
    )


def test_a_batch_within_budget_passes() -> None:
    """$12.40 against max_cost_usd 12.40, or no limit, passes without warnings."""
    estimate = estimate_batch_cost(_priced_rows())

    assert [] == check_budget(estimate, Decimal("12.40"))
    assert [] == check_budget(estimate, None)


def test_rows_without_a_documented_price_are_counted_as_unknown() -> None:
    """256P rows are not priced, counted as unknown and named in a warning."""
    rows = [
        *_priced_rows()[:3],
        *(
            BatchRow(
                line=90 + i, prompt=f"L{i}", image=f"{URL}/a.png", resolution="256P", duration=1
            )
            for i in range(3)
        ),
    ]

    estimate = estimate_batch_cost(rows)
    warnings = check_budget(estimate, 100)

    assert (Decimal("0.60"), 6, 3) == (estimate.total_usd, estimate.rows, estimate.unknown_rows)
    assert ["3 rows at 256P have no documented price and are not counted in $0.60"] == warnings
    assert "256P 1s: 3 rows, no documented price (not counted)" == str(estimate.lines[-1])


def test_already_charged_is_added_to_the_estimate() -> None:
    """Spend of earlier runs counts against the budget and is named in the message."""
    estimate = estimate_batch_cost(_priced_rows()[:40])  # $8.00

    assert [] == check_budget(estimate, 10, already_charged_usd=Decimal("2.00"))
    with pytest.raises(
        KandinskyBudgetError,
        match=r"^The batch would cost \$8\.00 by the documented prices \(plus \$2\.80 already "
        r"charged by earlier runs of this batch\), over max_cost_usd \$10\.00; nothing was",
    ):
        check_budget(estimate, 10, already_charged_usd=Decimal("2.80"))


def test_a_negative_budget_is_refused() -> None:
    """max_cost_usd below zero is a ValueError naming the parameter."""
    estimate = estimate_batch_cost(_priced_rows()[:1])

    with pytest.raises(
        ValueError, match=r"max_cost_usd must be a number of US dollars >= 0; got -1"
    ):
        check_budget(estimate, -1)


def test_the_cost_table_has_a_line_per_group_and_a_total() -> None:
    """The markdown table lists each group, the costliest first, and the total."""
    table = estimate_batch_cost(_priced_rows()).table()

    assert [
        "| Resolution | Duration | Rows | Unit price | Subtotal |",
        "|---|---:|---:|---:|---:|",
        "| 512P | 5s | 40 | $0.20 | $8.00 |",
        "| 1024P | 3s | 12 | $0.36 | $4.32 |",
        "| 512P | 1s | 2 | $0.04 | $0.08 |",
        "| **Total** | | 54 | | **$12.40** |",
    ] == table.splitlines()


async def test_errors_survive_pickling(tmp_path: Path) -> None:
    """Manifest and budget errors pickle with their problems and estimate, as Prefect needs."""
    manifest = _write(tmp_path / "run.csv", f"prompt,image,resolution\nA,{URL}/a.png,720P\n")
    with pytest.raises(KandinskyManifestError) as manifest_error:
        await load_manifest(manifest)
    with pytest.raises(KandinskyBudgetError) as budget_error:
        check_budget(estimate_batch_cost(_priced_rows()), 1)

    manifest_copy = pickle.loads(pickle.dumps(manifest_error.value))
    budget_copy = pickle.loads(pickle.dumps(budget_error.value))

    assert (
        str(manifest_error.value),
        manifest_error.value.problems,
        manifest_error.value.source,
    ) == (
        str(manifest_copy),
        manifest_copy.problems,
        manifest_copy.source,
    )
    assert (str(budget_error.value), budget_error.value.estimate) == (
        str(budget_copy),
        budget_copy.estimate,
    )
    assert isinstance(budget_copy.estimate, CostEstimate)


# -- bounded reading --------------------------------------------------------------------------


async def test_a_manifest_over_the_row_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More rows than max_rows (or KANDINSKY_MAX_MANIFEST_ROWS) is one problem naming both."""
    lines = "".join(f"sku-{i},Prompt {i},{URL}/{i}.png\n" for i in range(11))
    manifest = _write(tmp_path / "big.csv", "id,prompt,image\n" + lines)

    with pytest.raises(
        KandinskyManifestError,
        match=r"the manifest has more than 10 rows and was not read further; split it into "
        r"several batches, or raise max_rows \(or KANDINSKY_MAX_MANIFEST_ROWS\)",
    ):
        await load_manifest(manifest, max_rows=10)
    monkeypatch.setenv("KANDINSKY_MAX_MANIFEST_ROWS", "10")
    with pytest.raises(KandinskyManifestError, match="more than 10 rows"):
        await load_manifest(manifest)

    assert 11 == len((await load_manifest(manifest, max_rows=11)).rows)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
async def test_a_line_over_the_length_limit_is_a_row_problem(tmp_path: Path, suffix: str) -> None:
    """A line longer than max_line_chars is reported on its line; the other rows are read."""
    if suffix == "csv":
        text = f"prompt,image\nA,{URL}/a.png\n{'B' * 5000},{URL}/b.png\nC,{URL}/c.png\n"
    else:
        text = "\n".join(
            json.dumps({"prompt": prompt, "image": f"{URL}/x.png"}) for prompt in ("A", "B" * 5000)
        )
        text += "\n" + json.dumps({"prompt": "C", "image": f"{URL}/c.png", "steps": 99}) + "\n"
    manifest = _write(tmp_path / f"rows.{suffix}", text)

    with pytest.raises(KandinskyManifestError) as caught:
        await load_manifest(manifest, max_line_chars=1000)

    problem = caught.value.problems[0]
    assert (2 if suffix == "jsonl" else 3, None) == (problem.line, problem.value)
    assert problem.message.startswith("the line is longer than 1000 characters and was not read")
    assert len(caught.value.problems) == (2 if suffix == "jsonl" else 1)


async def test_deeply_nested_json_is_a_row_problem(tmp_path: Path) -> None:
    """JSON nested 100,000 deep is a row problem, not a RecursionError."""
    deep = '{"prompt": "A", "image": ' + "[" * 100_000 + "]" * 100_000 + "}"
    manifest = _write(
        tmp_path / "rows.jsonl",
        json.dumps({"prompt": "ok", "image": f"{URL}/a.png"}) + "\n" + deep + "\n",
    )

    with pytest.raises(KandinskyManifestError) as caught:
        await load_manifest(manifest, max_line_chars=1_000_000)

    assert [(2, "JSON nested too deeply to read")] == [
        (p.line, p.message.partition(";")[0]) for p in caught.value.problems
    ]


def test_the_cli_exits_2_on_deep_json_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`batch` on a manifest with too-deep JSON prints the problem and exits 2."""
    from prefect_kandinsky import cli

    deep = '{"prompt": "A", "image": ' + "[" * 20_000 + "]" * 20_000 + "}\n"
    manifest = _write(tmp_path / "rows.jsonl", deep)

    assert 2 == cli.main(["batch", str(manifest), "--emulator"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "line 1: JSON nested too deeply to read" in err
