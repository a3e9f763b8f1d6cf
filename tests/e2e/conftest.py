"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest
from dashboard_study import running_dashboard


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """``(base_url, study_name)`` of ``autofhe dashboard`` on a study with feasible and
    infeasible trials."""
    with running_dashboard(tmp_path_factory.mktemp("dashboard")) as served:
        yield served
