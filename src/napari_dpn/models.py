"""Model cards, weights files and the registry of models a user can pick by name.

A model is a ``NAME.safetensors`` weights file with a ``NAME.json`` model card
beside it.  The card is also embedded in the safetensors metadata, so a weights
file copied on its own still carries its input convention.  The card, not the
caller, decides how an image is fed to the network (the release model wants
BGR 0..255; feeding it RGB drops DRIVE AUC from 0.98 to about 0.5).

The embedded card is the truth: the ``.json`` beside the weights is a readable copy, and a copy
that differs from it (new weights copied over old ones, a crash between the two writes, a hand
edit) or whose recorded sha256 is not the file's is reported in ``LoadedModel.warnings`` and
ignored.  Weights files without an embedded card (older ones) use the ``.json``, with a note.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError, OutputExistsError, WeightsError
from .files import sha256_of as file_sha256  # one file hash for weights and outputs (torch-free there)
from .model_card import ModelCard, check_card_fields

if TYPE_CHECKING:
    import torch
    from torch import nn

# This module lists and reads model cards without importing torch (the network names it checks
# cards against are in ``architectures``): the widgets list the models when they dock, and torch
# takes 1-2 s to import, holding the GIL (a frozen viewer even from a background thread).

WEIGHTS_SUFFIX = ".safetensors"
DEFAULT_MODEL = "dpn-universal"  # what the CLI and the widgets use when the user picks none (docs/scale.md)
_CARD_KEY = "napari_dpn_card"


# Model names: what the fine-tune widget and ``napari-dpn train --name`` accept.  A plain file
# name (no folder, no leading dot, so never outside the output folder), and not a shipped name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
MAX_NAME_LENGTH = 100
NAME_RULE = "letters, digits, '.', '_', '-' or '+' (no spaces or slashes), starting with a letter or digit"


@dataclass
class LoadedModel:
    """A network in evaluation mode together with its card (the one embedded in the weights).

    ``warnings``: one sentence each about the card files (a ``.json`` that disagrees with the
    embedded card or was written for other weights, an old file without an embedded card); the
    CLI prints them, the widgets show them.
    """

    model: nn.Module
    card: ModelCard
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- locations


def shipped_models_dir() -> Path:
    """``weights/`` of the source tree, or ``napari_dpn/weights`` in an installed wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here / "weights", here.parent.parent / "weights"):
        if cand.is_dir():
            return cand
    return here / "weights"


def user_models_dir() -> Path:
    """Where fine-tuned models are saved: ``$NAPARI_DPN_MODELS`` or ``~/.napari-dpn/models``."""
    env = os.environ.get("NAPARI_DPN_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".napari-dpn" / "models"


def _model_dirs() -> list[Path]:
    return [shipped_models_dir(), user_models_dir()]


def shipped_model_names() -> set[str]:
    """Names of the shipped models (their file names and their cards' names), lower case."""
    names = set()
    d = shipped_models_dir()
    if d.is_dir():
        for path in d.glob(f"*{WEIGHTS_SUFFIX}"):
            names.add(path.stem.lower())
            with contextlib.suppress(WeightsError):
                names.add(read_card(path).name.lower())
    return names


def validate_model_name(name, shipped_ok: bool = False) -> str:
    """The stripped ``name`` if it can name a new model, else InputError with one sentence.

    A name is a plain file name (``NAME_RULE``; never a path, so a model is always written inside
    its output folder) without the ``.safetensors`` suffix.  A shipped model's name (any case) is
    refused unless ``shipped_ok``: saved in the user models folder, it would be shadowed by the
    shipped one, which the registry looks up first.
    """
    text = str(name if name is not None else "").strip()
    if not text:
        raise InputError("Give the new model a name.")
    if text.lower().endswith((WEIGHTS_SUFFIX, ".json", ".pt")):
        raise InputError(f"Give the model's name without a file suffix ('{Path(text).stem}', not '{text}').")
    if not NAME_RE.match(text) or len(text) > MAX_NAME_LENGTH:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InputError(
            f"Give the new model a name of {NAME_RULE}, at most {MAX_NAME_LENGTH} characters (not '{shown}')."
        )
    if not shipped_ok and text.lower() in shipped_model_names():
        raise InputError(f"'{text}' is a shipped model; choose another name for the fine-tuned one.")
    return text


def model_files(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """(weights, card) paths of the model ``name`` in ``folder``."""
    folder = Path(folder)
    return folder / f"{name}{WEIGHTS_SUFFIX}", folder / f"{name}.json"


def list_models() -> list[ModelCard]:
    """Cards of every shipped and user model, shipped first; unreadable ones are skipped."""
    cards, seen = [], set()
    for d in _model_dirs():
        if not d.is_dir():
            continue
        for path in sorted(d.glob(f"*{WEIGHTS_SUFFIX}")):
            if path.stem in seen:
                continue
            try:
                card = read_card(path)
            except WeightsError:
                continue
            if card.name != path.stem:  # a renamed (copied) file: the registry knows it by its file name
                card.extra["card_name"] = card.name
                card.name = path.stem
            card.extra["path"] = str(path)
            cards.append(card)
            seen.add(path.stem)
    return cards


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A model name (``dpn-release-drive``) or a path -> the weights file."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix and (path.exists() or os.sep in text or "/" in text):
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return path
    for d in _model_dirs():
        cand = d / f"{text}{WEIGHTS_SUFFIX}"
        if cand.is_file():
            return cand
    if path.is_file():
        return path
    names = ", ".join(c.name for c in list_models()) or "none installed"
    raise WeightsError(f"no model named '{text}' (available: {names}); give a name or a path to a .safetensors file")


# --------------------------------------------------------------------------- reading and writing


def _embedded_card(weights_path: Path) -> str | None:
    """The card JSON text embedded in a safetensors file, None if it has none."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights_path), framework="numpy") as f:  # the header only: no torch
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{weights_path.name} is not a valid weights file ({exc})") from None
    return meta.get(_CARD_KEY)


def _parse_card(text_or_data, where: str) -> ModelCard:
    try:
        data = json.loads(text_or_data) if isinstance(text_or_data, str) else text_or_data
    except json.JSONDecodeError as exc:
        raise WeightsError(f"the model card {where} is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"the model card {where} is not a JSON object")
    try:
        return ModelCard.from_dict(data)
    except WeightsError as exc:
        raise WeightsError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise WeightsError(f"the model card {where} is malformed ({exc})") from None


def _card_differences(card: ModelCard, other: ModelCard) -> list[str]:
    a, b = card.to_dict(), other.to_dict()
    return [k for k in a if k != "sha256" and a[k] != b.get(k)]


def _read_beside(beside: Path) -> tuple[ModelCard | None, str | None, str]:
    """(card, why it cannot be used, the sha256 it records) of the ``.json`` beside a weights file;
    (None, None, "") when there is none."""
    side, side_problem, side_sha = None, None, ""
    if beside.is_file():
        try:
            raw = json.loads(beside.read_text())
            side_sha = raw.get("sha256", "") if isinstance(raw, dict) else ""
            side = _parse_card(raw, f"in {beside.name}")
        except (WeightsError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            side_problem = str(exc) if isinstance(exc, WeightsError) else f"{type(exc).__name__}"
    return side, side_problem, side_sha


def inspect_card(weights_path: str | os.PathLike, check_sha256: bool = True) -> tuple[ModelCard, list[str]]:
    """(the card to use, warnings) for a weights file: the embedded card, checked against the
    ``.json`` beside it and, with ``check_sha256``, the file against the sha256 the ``.json``
    records.  An old file without an embedded card uses the ``.json``, with a note."""
    weights_path = Path(weights_path)
    beside = weights_path.with_suffix(".json")
    try:
        embedded, header_problem = _embedded_card(weights_path), None
    except WeightsError as exc:  # a corrupt file: its .json can still describe it in a list;
        embedded, header_problem = None, exc  # loading it fails in load_model with the reason
    side, side_problem, side_sha = _read_beside(beside)
    warnings: list[str] = []
    if embedded is None:
        if header_problem is not None and side is None:
            raise header_problem
        if side is None:
            if side_problem:
                raise WeightsError(
                    f"{weights_path.name} has no embedded model card and {beside.name} cannot be used ({side_problem})"
                )
            raise WeightsError(f"{weights_path.name} has no model card (neither {beside.name} nor embedded)")
        card = side
        if header_problem is not None:
            warnings.append(f"{header_problem}, so {beside.name} describes it")
        else:
            warnings.append(
                f"{weights_path.name} has no model card inside it (an older file), so {beside.name} "
                "is used; saving the model again embeds one"
            )
    else:
        card = _parse_card(embedded, f"inside {weights_path.name}")
        if side_problem:
            warnings.append(
                f"{beside.name} is not a usable model card ({side_problem}), so the card inside "
                f"{weights_path.name} is used"
            )
        elif side is not None:
            diff = _card_differences(card, side)
            if diff:
                warnings.append(
                    f"{beside.name} differs from the card inside {weights_path.name} "
                    f"({', '.join(diff[:4])}{'...' if len(diff) > 4 else ''}), so the card inside "
                    "the weights is used"
                )
    if check_sha256 and side_sha and header_problem is None:
        actual = file_sha256(weights_path)
        card.sha256 = actual
        if actual != side_sha:
            truth = (
                "the card inside the weights is used"
                if embedded is not None
                else "its card may not describe these weights"
            )
            warnings.append(
                f"{weights_path.name} is not the file {beside.name} was written for (its sha256 differs), so {truth}"
            )
    return card, warnings


def read_card(weights_path: str | os.PathLike) -> ModelCard:
    """The card of a weights file: the embedded one, else (older files) the ``.json`` beside it.

    Cheap (reads the safetensors header only); :func:`inspect_card` also says whether the
    ``.json`` agrees, and :func:`load_model` reports that in ``LoadedModel.warnings``.
    """
    return inspect_card(weights_path, check_sha256=False)[0]


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the card's architecture, load the weights, put it in evaluation mode on ``device``.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A model's name (shipped, or in the user-models folder: ``napari-dpn models`` lists them)
        or the path of a ``.safetensors`` file.
    device : str or torch.device
        Where the network goes ("cpu", "cuda", "cuda:1", "mps").

    Returns
    -------
    LoadedModel
        The network with its card (the one embedded in the weights) and any warnings about it.

    Raises
    ------
    WeightsError
        One sentence when the name is unknown or the file is not a model.

    Examples
    --------
    >>> from napari_dpn import load_model
    >>> model = load_model("dpn-release-drive")
    >>> model.card.architecture
    'dpn-release'
    >>> 0 < model.card.threshold < 1
    True
    """
    path = resolve_model_path(name_or_path)
    from .model import build_model, flush_denormals_

    card, warnings = inspect_card(path)
    model = build_model(card.architecture)
    try:
        from safetensors.torch import load_file

        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise WeightsError(f"{path.name} is corrupt or not a safetensors file ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise WeightsError(f"{path.name} does not fit the '{card.architecture}' network: {first}") from None
    flush_denormals_(model)  # subnormal weights (left by weight decay) slow x86 convolutions ~100x
    model.eval().to(device)
    return LoadedModel(model=model, card=card, path=path, warnings=warnings)


def save_model(model: nn.Module, card: ModelCard, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``path`` (.safetensors, with the card embedded) and its ``.json`` card, each atomically;
    the ``.json`` gets the file's sha256.  With ``overwrite=False`` nothing is written if either
    file exists (OutputExistsError), not even one that appears meanwhile."""
    import torch
    from safetensors.torch import save

    from .files import atomic_write
    from .image_writers import ensure_output_folder

    path = Path(path)
    if path.suffix != WEIGHTS_SUFFIX:
        path = path.with_name(path.name + WEIGHTS_SUFFIX)
    beside = path.with_suffix(".json")
    if not overwrite:
        for p in (path, beside):
            if p.exists():
                raise OutputExistsError(f"{p} already exists and was not replaced.")
    ensure_output_folder(path.parent)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    card.architecture = getattr(model, "architecture", card.architecture)
    embedded = dataclasses.replace(card, sha256="")
    check_card_fields(embedded)
    # Serialised in memory and written with Python's I/O: a full disk is then an OSError with its
    # errno (atomic_write's OutputError says why), not a SafetensorError carrying only a message.
    data = save(state, metadata={_CARD_KEY: json.dumps(embedded.to_dict())})
    with atomic_write(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
    card.sha256 = file_sha256(path)
    try:
        with atomic_write(beside, overwrite=overwrite) as tmp:
            Path(tmp).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    except OutputExistsError:
        if not overwrite:
            path.unlink(missing_ok=True)  # ours, written a moment ago: leave nothing half-saved
        raise
    return path


def rewrite_card(path: str | os.PathLike, card: ModelCard) -> Path:
    """Replace the card of a weights file (embedded and beside it) without touching its tensors."""
    from safetensors.torch import load_file, save_file

    from .files import atomic_write

    path = Path(path)
    state = load_file(str(path))
    embedded = dataclasses.replace(card, sha256="")
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata={_CARD_KEY: json.dumps(embedded.to_dict())})
        os.chmod(tmp, 0o644)
    card.sha256 = file_sha256(path)
    with atomic_write(path.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return path
