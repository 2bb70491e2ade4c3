"""The one way the benchmark scripts hand out their JSON record."""

from __future__ import annotations

import json
from typing import Any


def emit(record: dict[str, Any], path: str | None) -> dict[str, Any]:
    """Print ``record`` as one JSON line and, when ``path`` is given, write it there too."""
    print(json.dumps(record))
    if path:
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
    return record
