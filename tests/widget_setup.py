"""Set-up shared by the napari tests: small random-weights models in a user-models folder, and a
Fine-tune widget configured for a quick CPU run."""

from __future__ import annotations

from pathlib import Path


def save_random_model(folder: Path, name: str = "tiny-test", seed: int = 0, **card) -> Path:
    """A seeded random-weights 'dpn' model saved as ``folder/<name>.safetensors`` (card fields in ``card``)."""
    import torch

    from napari_dpn.model import build_model
    from napari_dpn.models import ModelCard, save_model

    torch.manual_seed(seed)
    fields = {"description": "Random weights for tests.", "threshold": 0.5, **card}
    return save_model(
        build_model("dpn"), ModelCard(name=name, architecture="dpn", **fields), folder / f"{name}.safetensors"
    )


def configure_finetune(w):
    """The Fine-tune widget set for a quick CPU run of the shipped release model; confirmations accepted."""
    w.select_model("dpn-release-drive")
    w.device_combo.setCurrentText("cpu")
    w.settings.crop_spin.setValue(48)
    w.settings.lr_edit.setText("1e-4")
    w.settings.name_edit.setText("ft-test")
    w.settings._on_name_edited("ft-test")
    w._confirm = lambda *a, **k: True
    return w
