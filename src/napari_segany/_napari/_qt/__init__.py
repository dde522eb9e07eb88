"""Every Qt import of napari-segany lives here: dock widgets, sections, model picker, tasks.

Widgets are imported from their own modules (this package imports nothing), so importing it is
cheap; the Qt-free layer glue and scripting functions live one level up in ``_napari``.
"""
