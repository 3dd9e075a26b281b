"""The one JSON response class of the service's routes."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse as _StarletteJSONResponse


class JSONResponse(_StarletteJSONResponse):
    """Starlette's JSONResponse, except that a lone surrogate in a string (which JSON can
    carry as `"\\ud800"` but UTF-8 cannot) is written as that JSON escape instead of
    failing the whole answer with a 500. Byte-identical output for every valid string."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        ).encode("utf-8", "backslashreplace")
