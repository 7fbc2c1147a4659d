"""Any exception as the one sentence a user sees: the CLI, the widgets and the cohort say the
same thing for the same failure.  Apart from ``errors`` (which every module imports) because it
needs the file-system sentences of ``files``."""

from __future__ import annotations

from .errors import DPNError
from .files import os_error_message


def sentence(
    exc: BaseException,
    *,
    doing: str = "the command",
    out_of_memory: str = "out of memory",
    where: str | None = None,
    limit: int | None = None,
) -> str:
    """The one sentence a user sees for ``exc`` (the CLI after ``napari-dpn: error:``, a widget's
    notification, a cohort's manifest row): written once here so every caller says the same.

    A DPNError's own message; ``out_of_memory`` for MemoryError, torch's OutOfMemoryError or an
    error whose text says "out of memory" (a CUDA allocator); an OSError as what could not be
    done to which file and why (by errno; ``where`` when the exception names no file); anything
    else as "``doing`` failed (Type: its first line)".  ``limit`` (a manifest row, which must
    stay one line): the whole text with its whitespace collapsed, the exception's cut at ``limit``
    characters, instead of the first line.

    >>> from napari_dpn.errors import InputError
    >>> sentence(InputError("the image is empty"))
    'the image is empty'
    >>> sentence(MemoryError(), out_of_memory="out of memory; try --device cpu")
    'out of memory; try --device cpu'
    >>> sentence(ValueError("bad\\nvalue"), doing="Segmentation")
    'Segmentation failed (ValueError: bad)'
    >>> sentence(ValueError("bad\\nvalue"), doing="Segmentation", limit=5)
    'Segmentation failed (ValueError: bad v)'
    """
    if isinstance(exc, DPNError):
        return str(exc) if limit is None else " ".join(str(exc).split())
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if limit is not None:
        first = " ".join(text.split())[:limit]
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in first.lower():
        return out_of_memory
    if isinstance(exc, OSError):
        return os_error_message(exc, exc.filename or where or "a file", "use")
    return f"{doing} failed ({type(exc).__name__}: {first or type(exc).__name__})"
