"""Report sections about the evaluated model and its training run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from meddet.config import CfgNode


def run_sections(cfg: CfgNode, model: nn.Module) -> list[tuple[str, str]]:
    """Report sections about `model` (the model that was evaluated; never a second one built for it) and
    its training run (OUTPUT_DIR/metrics.json): model summary, training diagnosis."""
    from meddet.modeling.summary import model_summary
    from meddet.training.diagnosis import diagnose, format_findings

    sections = [("Model summary", str(model_summary(model, cfg)))]
    metrics = Path(cfg.OUTPUT_DIR) / "metrics.json"
    if metrics.is_file():
        sections.append(("Training diagnosis", format_findings(diagnose(metrics))))
    return sections
