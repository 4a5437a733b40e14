"""The README's demo runs headless in its short mode, and its summary holds up.

It is the whole system at once: the local stack with a real node, the
operator installed by its chart, the workers as pods from the project's
image, and a burst of messages through the real queues. The test checks the
summary the demo prints, and the PNG.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_short_demo_answers_everything_and_scales_up_and_back(tmp_path: Path) -> None:
    summary_path, plot_path = tmp_path / "summary.json", tmp_path / "timeline.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "falachefe_devstack.demo",
            "--short",
            "--headless",
            "--summary-json",
            str(summary_path),
            "--plot",
            str(plot_path),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "scripts")},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert summary_path.exists(), f"no summary; demo output:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    summary = json.loads(summary_path.read_text())
    assert summary["sent"] == 60
    assert summary["answered"] == summary["sent"], summary
    assert summary["refused"] == 0
    assert sum(summary["failed_jobs"].values()) == 0, summary["failed_jobs"]
    assert any(summary["peak_replicas"][p] > summary["min_replicas"][p] for p in summary["min_replicas"]), summary
    assert summary["final_replicas"] == summary["min_replicas"], summary
    assert any(event.startswith("Scaled: pool") for event in summary["scale_events"])
    assert summary["latency_p99_s"] is not None and summary["latency_p99_s"] > 0
    assert plot_path.read_bytes().startswith(b"\x89PNG")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "OK: 60/60 answered" in result.stdout
