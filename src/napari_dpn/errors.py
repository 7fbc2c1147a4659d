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
