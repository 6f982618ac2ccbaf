"""Calibration: the fastest cooperation of a large and a small model (schedule and accelerations) whose quality
stays within a stated floor of large only, measured on the user's prompts and machine.

    report = sr_plugin.calibrate(pipe, small, prompts, scorer=judge)       # or floor=Floor(min_ssim=0.9)
    report.chosen.schedule, report.table(), report.to_json(path), report.plot(path)
    checked = confirm(pipe, small, report, other_prompts, scorer=judge)   # the choice on pairs it was not chosen on

Above the switch and the accelerations (it applies and removes them), below the lab and the command line. It needs
the lab extra (scikit-image for SSIM, scipy for McNemar's test, matplotlib for the plot).
"""

from .candidates import GRIDS, Candidate, candidate_grid
from .confirm import confirm, new_seeds
from .report import CalibrationReport, CandidateResult
from .search import calibrate
from .stats import Floor, Paired, mcnemar_exact, paired

__all__ = [
    "GRIDS",
    "CalibrationReport",
    "Candidate",
    "CandidateResult",
    "Floor",
    "Paired",
    "calibrate",
    "candidate_grid",
    "confirm",
    "mcnemar_exact",
    "new_seeds",
    "paired",
]
