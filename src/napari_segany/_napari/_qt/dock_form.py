"""A dock widget body that fits a laptop screen: a scrolling form, sections, a fixed task bar.

:class:`DockForm` is the base of the SAM and SegGPT dock widgets. Its rows live in a vertical
scroll area (never a horizontal one: the dock keeps a fixed, narrow width and long texts wrap),
so both widgets docked on a 1366 × 768 screen leave the canvas most of the window; the
frequently used rows come first, the rest go into collapsed :func:`collapsible` sections; the
background task's progress bar and *Cancel* button stay visible under the scroll area.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, Label, Widget
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QDockWidget,
    QFrame,
    QMainWindow,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

FORM_WIDTH = 290
"""Width (px) of the form: the dock never grows beyond it plus the scroll bar, so napari's layer
list (~340 px) and this dock leave the canvas at least half of a 1366 px wide window."""
PREFERRED_HEIGHT = 320
"""Height (px) a dock asks for: two docks stacked share a 768 px high window evenly."""


def collapsible(title: str, content: Any, *, expanded: bool = False) -> QCollapsible:
    """A collapsible Qt section holding a magicgui widget or a QWidget (collapsed by default)."""
    section = QCollapsible(title)
    section.addWidget(content.native if isinstance(content, Widget) else content)
    layout = section.layout()
    if layout is not None:
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
    if expanded:
        section.expand(animate=False)
    else:
        section.collapse(animate=False)
    return section


def wrapped_label(text: str = "") -> Label:
    """A magicgui label whose text wraps instead of widening the dock."""
    label = Label(value=text)
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Minimum)
    label.native.setMinimumWidth(50)
    return label


def find_docked(viewer: Any, widget_type: type) -> Any | None:
    """The first widget of ``widget_type`` docked in ``viewer``'s window, or None.

    Reads napari's public ``Window.dock_widgets`` mapping (from napari 0.6: dock wrappers up to
    0.8, the inner widgets from 0.9, where the private ``_dock_widgets`` warns), else
    ``_dock_widgets`` (older napari).
    """
    docked = getattr(viewer.window, "dock_widgets", None)
    if docked is None:
        docked = getattr(viewer.window, "_dock_widgets", {})
    for item in list(docked.values()):
        if isinstance(item, QDockWidget):
            item = item.widget()
        inner = getattr(item, "native", item)  # magicgui widgets wrap a QWidget
        found = inner if isinstance(inner, widget_type) else inner.findChild(widget_type)
        if found is not None:
            return found
    return None


class DockForm(QWidget):
    """Scrolling form + sections + a fixed bottom bar.

    Parameters
    ----------
    parent
        Optional Qt parent.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._form = QWidget()
        self._form_layout = QVBoxLayout(self._form)
        self._form_layout.setContentsMargins(4, 4, 4, 4)
        self._form_layout.setSpacing(4)
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.scroll_area.setWidget(self._form)
        self._form.setMaximumWidth(FORM_WIDTH)
        self.setMaximumWidth(FORM_WIDTH + 20)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll_area, stretch=1)
        self._bottom = QVBoxLayout()
        layout.addLayout(self._bottom)
        self._sections: dict[str, QCollapsible] = {}
        self._stretch_added = False

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        """A modest height, so napari splits stacked docks evenly (the form scrolls)."""
        return QSize(FORM_WIDTH + 20, PREFERRED_HEIGHT)

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        """When docked next to other plugin forms, share the dock area's height evenly."""
        super().showEvent(event)
        QTimer.singleShot(0, self._share_dock_height)

    def _share_dock_height(self) -> None:
        window = self.window()
        own = _dock_of(self)
        if not isinstance(window, QMainWindow) or own is None or own.isFloating():
            return
        area = window.dockWidgetArea(own)
        docks = [
            dock
            for dock in window.findChildren(QDockWidget)
            if dock.isVisible()
            and not dock.isFloating()
            and window.dockWidgetArea(dock) == area
            and dock.findChild(DockForm) is not None
        ]
        vertical = area in (Qt.LeftDockWidgetArea, Qt.RightDockWidgetArea)
        if len(docks) > 1 and vertical:
            total = sum(dock.height() for dock in docks)
            window.resizeDocks(docks, [total // len(docks)] * len(docks), Qt.Vertical)

    @property
    def native(self) -> QWidget:
        """The Qt widget (this object), for code written against magicgui containers."""
        return self

    def add_rows(self, *widgets: Widget | QWidget, labels: bool = True) -> Container | None:
        """Append rows; magicgui widgets go into one labelled form so their labels align."""
        magic = [w for w in widgets if isinstance(w, Widget)]
        if magic and len(magic) == len(widgets):
            form = Container(widgets=list(magic), labels=labels)
            form.margins = (0, 0, 0, 0)
            self._append(form.native)
            return form
        for widget in widgets:
            self._append(widget.native if isinstance(widget, Widget) else widget)
        return None

    def _append(self, widget: QWidget) -> None:
        index = self._form_layout.count() - (1 if self._stretch_added else 0)
        self._form_layout.insertWidget(index, widget)

    def add_section(self, title: str, content: Any, *, expanded: bool = False) -> QCollapsible:
        """Add a collapsible section (magicgui widget or QWidget) below the existing ones.

        This is the mounting point other parts of the plugin use (e.g. the text-prompt section of
        the SAM widget). Returns the section; :meth:`section` finds it again by title.
        """
        section = collapsible(title, content, expanded=expanded)
        self._append(section)
        self._sections[title] = section
        return section

    def section(self, title: str) -> QCollapsible | None:
        """The section added under ``title``, or ``None``."""
        return self._sections.get(title)

    def set_bottom(self, widget: QWidget) -> None:
        """Put ``widget`` (the task bar) under the scroll area, always visible."""
        self._bottom.addWidget(widget)

    def finish_form(self) -> None:
        """Push the rows to the top (call once, after the last fixed row)."""
        if not self._stretch_added:
            self._form_layout.addStretch(1)
            self._stretch_added = True


def _dock_of(widget: QWidget) -> QDockWidget | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent
