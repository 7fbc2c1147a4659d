"""``napari-dpn models``: the shipped and user models, by name."""

from __future__ import annotations

from ..models import list_models, user_models_dir


def register(sub) -> None:
    p = sub.add_parser("models", help="list the shipped and user models")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    for card in list_models():
        print(f"{card.name:<28} {card.summary}")
    print(f"(user models folder: {user_models_dir()})")
    return 0
