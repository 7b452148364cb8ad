"""Reachability probes: does a URL answer at all (a mirror, a PPA, an ISO)?"""

from __future__ import annotations

import urllib.error
import urllib.request


def url_answers(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """(answers, detail) for a HEAD request with a timeout in seconds: ('HTTP 200') or the reason."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return True, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(getattr(exc, "reason", exc))
