"""The process environment a run needs: NLTK's punkt data for IFEval, offline mode for all-offline runs, and
whether the Hugging Face hub can be reached at all (checked before any model loads)."""
from __future__ import annotations

import os
import socket
import sys
from functools import lru_cache
from urllib.parse import urlparse

from evalsuite.spec.tasks import TASKS_DIR

HUB_TIMEOUT_S = 3.0


def configure(all_offline: bool) -> None:
    """Before lm-eval or datasets is imported (they read these once, at import).

    NLTK's punkt_tab ships in tasks/nltk_data: lm-eval's IFEval checker (hub and offline task alike) would
    otherwise try to download it at import, fail offline, and then break sentence counting. A run whose tasks
    are all offline twins never touches a hub; one with hub tasks keeps whatever the user set.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    nltk_data = str(TASKS_DIR / "nltk_data")
    paths = os.environ.get("NLTK_DATA", "").split(os.pathsep)
    if nltk_data not in paths:
        os.environ["NLTK_DATA"] = os.pathsep.join(p for p in (nltk_data, *paths) if p)
    if "nltk" in sys.modules and nltk_data not in sys.modules["nltk"].data.path:
        sys.modules["nltk"].data.path.insert(0, nltk_data)
    if all_offline:
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """False when the user said offline (HF_HUB_OFFLINE=1) or the hub's host takes no connection within 3 s."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def datasets_cached_by_user() -> bool:
    """The user's own statement that hub datasets are in the local cache (HF_DATASETS_OFFLINE=1)."""
    return os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes")
