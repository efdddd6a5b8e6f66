"""Views: accepted names, AP as a bedside exposure (short SID, source anterior) and the magnification it implies."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from ct_projection.geometry import ProjectionGeometry, base_pose, canonical_view
from ct_projection.render import DRRRenderer
from ct_projection.volume import CTVolume


@pytest.mark.parametrize(
    "name, view", [("pa", "PA"), ("Ap", "AP"), ("lat", "LAT"), ("LATERAL", "LAT"), ("lateral", "LAT"), (" PA ", "PA")]
)
def test_view_names_any_case(name: str, view: str) -> None:
    assert canonical_view(name) == view
    assert ProjectionGeometry(view=name).view == view


def test_unknown_view_lists_accepted_names() -> None:
    with pytest.raises(ValueError, match="PA, AP, LAT.*LATERAL"):
        ProjectionGeometry(view="oblique")


def test_ap_is_bedside_unless_told_otherwise() -> None:
    assert ProjectionGeometry(view="PA").sdd_mm == 1800.0
    assert ProjectionGeometry(view="LATERAL").sdd_mm == 1800.0
    ap = ProjectionGeometry(view="AP")
    assert ap.sdd_mm == 1000.0 and ap.sid_mm == 850.0
    assert ProjectionGeometry(view="AP", sdd_mm=1500).sdd_mm == 1500.0  # an explicit distance wins
    assert ProjectionGeometry(**ap.to_dict()) == ap  # recorded config round-trips
    assert base_pose(ap).translation_mm[1] > 0 > base_pose(ProjectionGeometry()).translation_mm[1]  # source anterior


def _heart_width_px(view: str) -> float:
    """Detector distance between two points 120 mm apart laterally, 60 mm anterior of the isocentre (the heart)."""
    geometry = ProjectionGeometry(view=view, size_px=64, detector_mm=430.0, jitter_rotation_deg=0.0)
    vol = CTVolume(np.full((8, 8, 8), -1000.0, np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))
    renderer = DRRRenderer(vol, geometry, isocentre_world=np.zeros(3), device="cpu", body_only=False)
    heart = np.array([[-60.0, 60.0, 0.0], [60.0, 60.0, 0.0]])  # RAS: +y anterior
    xy = renderer.project(base_pose(geometry), heart)
    return float(np.abs(xy[1, 0] - xy[0, 0]) * geometry.pixel_mm)


def test_ap_magnifies_the_anterior_heart() -> None:
    pa, ap = _heart_width_px("PA") / 120.0, _heart_width_px("AP") / 120.0
    # Magnification = SDD / (source-to-object distance): PA 1800/(1650+60), AP 1000/(850-60).
    assert pa == pytest.approx(1800 / 1710, rel=0.01)
    assert ap == pytest.approx(1000 / 790, rel=0.01)
    assert ap > 1.15 * pa


def test_cli_accepts_lateral_any_case(tmp_path) -> None:
    from pipeline.cli import app

    result = CliRunner().invoke(app, ["generate", "--view", "Oblique", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "LATERAL" in result.output and "Traceback" not in result.output
