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
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget
from superqt import QCollapsible

FORM_WIDTH = 330
"""Width (px) of the form: the dock never grows beyond it plus the scroll bar."""


def collapsible(title: str, content: Any, *, expanded: bool = False) -> QCollapsible:
    """A collapsible Qt section holding a magicgui widget or a QWidget (collapsed by default)."""
    section = QCollapsible(title)
    section.addWidget(content.native if isinstance(content, Widget) else content)
    if not expanded:
        section.collapse(animate=False)
    return section


def wrapped_label(text: str = "") -> Label:
    """A magicgui label whose text wraps instead of widening the dock."""
    label = Label(value=text)
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Minimum)
    label.native.setMinimumWidth(50)
    return label


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
        self.setMaximumWidth(FORM_WIDTH + 24)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll_area, stretch=1)
        self._bottom = QVBoxLayout()
        layout.addLayout(self._bottom)
        self._sections: dict[str, QCollapsible] = {}
        self._stretch_added = False

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
