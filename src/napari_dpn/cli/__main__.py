"""``python -m napari_dpn.cli``: the ``napari-dpn`` command."""

import sys

from . import main

sys.exit(main())
