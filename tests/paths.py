"""Where the tests find the repository and the staged datasets (beside the checkout, as in CI)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
