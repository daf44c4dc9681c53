"""`specllm compare-external`: predictions against an independent survey (paper Tables 7-8, Figures 1-8).

Modules by role, imports one way: `reference` (catalogue reading, joining) and `stats` (tables through
`specllm.metrics`) below `figures` and `report`, all below `compare` (the run).
"""

from .compare import REPORT, compare_external
from .report import overall_csv

__all__ = ["REPORT", "compare_external", "overall_csv"]
