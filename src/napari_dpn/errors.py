"""User-facing errors: each carries one clear sentence for the CLI and the widgets."""


class DPNError(Exception):
    """An error whose message is meant for the user, shown without a traceback."""


class InputError(DPNError):
    """An image, mask or folder the user gave cannot be used."""


class WeightsError(DPNError):
    """A weights file or model card is missing, corrupt or does not fit the network."""


class TrainingError(DPNError):
    """Training cannot start or had to stop (bad pairs, NaN loss, ...)."""


class OutputError(InputError):
    """A result cannot be written: the folder is missing, read-only or full, or a file would be replaced
    (an InputError too: the folder is the user's choice, and older callers catch InputError)."""


class OutputExistsError(OutputError):
    """The output file exists and replacing it was not asked for (``--overwrite``)."""


def sentence(
    exc: BaseException,
    *,
    doing: str = "the command",
    out_of_memory: str = "out of memory",
    where: str | None = None,
) -> str:
    """The one sentence a user sees for ``exc`` (the CLI after ``napari-dpn: error:``, a widget's
    notification, a cohort's manifest row): written once here so every caller says the same.

    A DPNError's own message; ``out_of_memory`` for MemoryError, torch's OutOfMemoryError or an
    error whose text says "out of memory" (a CUDA allocator); an OSError as what could not be
    done to which file and why (by errno; ``where`` when the exception names no file); anything
    else as "``doing`` failed (Type: its first line)".

    >>> sentence(InputError("the image is empty"))
    'the image is empty'
    >>> sentence(MemoryError(), out_of_memory="out of memory; try --device cpu")
    'out of memory; try --device cpu'
    >>> sentence(ValueError("bad\\nvalue"), doing="Segmentation")
    'Segmentation failed (ValueError: bad)'
    """
    if isinstance(exc, DPNError):
        return str(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in first.lower():
        return out_of_memory
    if isinstance(exc, OSError):
        # image_io imports this module (its errors), so its errno sentences are imported here, late.
        from .image_io import os_error_message

        return os_error_message(exc, exc.filename or where or "a file", "use")
    return f"{doing} failed ({type(exc).__name__}: {first or type(exc).__name__})"
