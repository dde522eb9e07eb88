"""Fixtures shared by the widget tests: one notification capture for every test."""

import pytest


@pytest.fixture
def notifications():
    """Every napari notification shown during the test, in order."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)
