"""The napari plugin: readers, writer, sample data and the "Segment vessels" widget.

This package is the only place in napari-dpn that imports Qt or napari; the manifest
``napari_dpn/napari.yaml`` points napari at the functions defined here.
"""
