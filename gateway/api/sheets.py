"""The credential sheet a city hands to each unit, and bulk import files: CSV and XLSX.

CSV is written UTF-8 with a BOM, so Excel (which assumes the ANSI code page otherwise) shows
Chinese names; it is read as UTF-8 (BOM or not) and, failing that, GB18030 (what Excel on a
Chinese Windows saves). XLSX goes through openpyxl with every cell a string: a device ID kept as
a number would lose digits, and a string starting with ``=`` would become a formula.

Reading is bounded: the file is at most ``[http] max_body_bytes``, an XLSX's parts may expand to
at most :data:`MAX_XLSX_BYTES` (a zip bomb is refused before openpyxl sees it), and at most
:data:`MAX_ROWS` rows are taken. openpyxl pads a sheet's rows and columns out to its declared
dimension, so a tiny file with one cell at ``XFD200000`` would keep a thread busy for minutes: a
worksheet declaring more than :data:`MAX_SCAN_ROWS` rows or :data:`MAX_COLUMNS` columns is
refused, only the first :data:`MAX_COLUMNS` columns are read, and every row scanned (empty ones
too) counts against :data:`MAX_SCAN_ROWS` (the dimension may be missing or lie).
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from openpyxl import Workbook, load_workbook  # type: ignore[import-untyped]
from openpyxl.styles import Font  # type: ignore[import-untyped]

from gateway.directory import ImportRow

SHEET_COLUMNS: tuple[str, ...] = (
    "device_id",
    "name",
    "password",
    "sip_server_id",
    "sip_domain",
    "sip_host",
    "sip_port",
    "transport",
    "unit",
)
IMPORT_COLUMNS = ("device_id", "name", "password", "unit")
MAX_ROWS = 100_000
MAX_XLSX_BYTES = 64 * 1024 * 1024
MAX_COLUMNS = 64  # an import needs 4 columns; an export has 9
MAX_SCAN_ROWS = MAX_ROWS + 1000  # rows an XLSX may hold, empty ones included
HEADER_SEARCH_ROWS = 10  # an XLSX may have a title row (or a few) above the header
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_TYPE = "text/csv; charset=utf-8"


class SheetError(ValueError):
    """The file cannot be read as a sheet (the API answers 422 naming ``file``)."""


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return b"\xef\xbb\xbf" + out.getvalue().encode("utf-8")


def to_xlsx(
    title: str | None, header: Sequence[str], rows: Iterable[Sequence[Any]], sheet: str = "sheet"
) -> bytes:
    wb = Workbook()
    ws = wb.active
    ws.title = sheet[:31]
    bold = Font(bold=True)
    if title:
        ws.append([title])
        ws.cell(row=1, column=1).font = bold
    ws.append(list(header))
    for cell in ws[ws.max_row]:
        cell.font = bold
    for row in rows:
        ws.append(["" if v is None else str(v) for v in row])
        for cell in ws[ws.max_row]:
            cell.data_type = "s"  # never a formula, never a number
    for i, name in enumerate(header, start=1):
        ws.column_dimensions[ws.cell(row=2 if title else 1, column=i).column_letter].width = max(
            12, len(name) + 2, 22 if name in ("device_id", "sip_server_id") else 0
        )
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def disposition(filename: str, fallback: str) -> str:
    """``Content-Disposition`` naming the file, UTF-8 names per RFC 6266/5987 with an ASCII
    fallback for old clients."""
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d")


# -- reading -----------------------------------------------------------------------------------
def read_rows(data: bytes) -> list[ImportRow]:
    """The import rows of a CSV or XLSX file (told apart by content, not by name): the header
    is the first row, within the first few, with a ``device_id`` column; unknown columns are
    ignored (so an exported sheet imports back). ``row`` is the row's number in the file."""
    is_xlsx = data[:4] == b"PK\x03\x04"
    return _rows(_xlsx_table(data) if is_xlsx else _csv_table(data))


def _csv_table(data: bytes) -> Iterable[tuple[int, list[Any]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("gb18030")
        except UnicodeDecodeError:
            raise SheetError("file: not UTF-8 or GB18030 text, nor an XLSX workbook") from None
    if "\x00" in text:
        raise SheetError("file: not a CSV file (NUL characters)")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as exc:
        raise SheetError(f"file: unreadable CSV at line {reader.line_num}: {exc}") from None


def _xlsx_table(data: bytes) -> Iterable[tuple[int, list[Any]]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            expanded = sum(info.file_size for info in z.infolist())
        if expanded > MAX_XLSX_BYTES:
            raise SheetError(f"file: the workbook expands to over {MAX_XLSX_BYTES} bytes")
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except SheetError:
        raise
    except Exception as exc:  # openpyxl raises many kinds for a broken file
        raise SheetError(f"file: not a readable XLSX workbook ({type(exc).__name__})") from None
    try:
        ws = wb.worksheets[0] if wb.worksheets else None
        if ws is None:
            raise SheetError("file: the workbook has no sheet")
        declared_rows, declared_cols = ws.max_row, ws.max_column  # None without a dimension
        if declared_rows is not None and declared_rows > MAX_SCAN_ROWS:
            raise SheetError(
                f"file: the worksheet spans {declared_rows} rows (at most {MAX_SCAN_ROWS}); "
                "delete the cells far below the table"
            )
        if declared_cols is not None and declared_cols > MAX_COLUMNS:
            raise SheetError(
                f"file: the worksheet spans {declared_cols} columns (at most {MAX_COLUMNS}); "
                "delete the cells far right of the table"
            )
        rows = ws.iter_rows(max_col=MAX_COLUMNS, values_only=True)
        for number, row in enumerate(rows, start=1):
            if number > MAX_SCAN_ROWS:
                raise SheetError(f"file: the worksheet has over {MAX_SCAN_ROWS} rows")
            yield number, list(row)
    except SheetError:
        raise
    except Exception as exc:
        raise SheetError(f"file: not a readable XLSX workbook ({type(exc).__name__})") from None
    finally:
        wb.close()


def _cell(value: Any, column: str) -> str | None:
    """A cell as text, or None when empty. A device ID stored as a number is refused: Excel
    keeps 15 significant digits, so its last ones are already lost."""
    if value is None:
        return None
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        if column == "device_id":
            raise ValueError(
                "device_id: stored as a number in the sheet (digits may be lost); "
                "format the column as text"
            )
        value = str(int(value)) if isinstance(value, int) or value.is_integer() else str(value)
    elif not isinstance(value, str):
        value = str(value)
    value = value.strip() if column != "password" else value
    return value or None


def _rows(table: Iterable[tuple[int, list[Any]]]) -> list[ImportRow]:
    columns: dict[str, int] | None = None
    out: list[ImportRow] = []
    for number, row in table:
        if columns is None:
            names = [str(c).strip().lower() if c is not None else "" for c in row]
            if "device_id" in names:
                columns = {c: names.index(c) for c in IMPORT_COLUMNS if c in names}
                if "unit" not in columns and "unit_id" in names:
                    columns["unit"] = names.index("unit_id")
            elif number >= HEADER_SEARCH_ROWS:
                raise SheetError("file: no header row with a device_id column")
            continue
        if all(c is None or (isinstance(c, str) and not c.strip()) for c in row):
            continue
        if len(out) >= MAX_ROWS:
            raise SheetError(f"file: more than {MAX_ROWS} rows")
        values: dict[str, str | None] = {}
        try:
            for name, index in columns.items():
                values[name] = _cell(row[index] if index < len(row) else None, name)
        except ValueError as exc:
            out.append(ImportRow(number, error=str(exc), error_field=name))
            continue
        out.append(ImportRow(number, **values))
    if columns is None:
        raise SheetError("file: no header row with a device_id column")
    return out
