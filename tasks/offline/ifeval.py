"""ifeval_offline's scoring: lm-eval's own IFEval code, made to work with no network and deterministically.

lm-eval's checker calls ``nltk.download("punkt_tab")`` at import when it cannot find the data, which fails
offline and then breaks sentence counting; putting the bundled copy (tasks/nltk_data, see its SOURCE.md) on
nltk's path first avoids both. The prompts are read by loader.load_ifeval.
"""
from __future__ import annotations

from pathlib import Path

import langdetect
import nltk

NLTK_DATA = Path(__file__).resolve().parents[1] / "nltk_data"
nltk.data.path.insert(0, str(NLTK_DATA))
# langdetect samples at random; a fixed seed makes the language checks give the same verdict on every run.
langdetect.DetectorFactory.seed = 0

from lm_eval.tasks.ifeval.utils import agg_inst_level_acc, process_results  # noqa: E402,F401  (used by the YAML)
