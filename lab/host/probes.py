"""Reachability probes: does a URL answer at all (a mirror, a PPA, an ISO)? Asked when it matters
(lab.build, lab.matrix), so a reason such as "cannot be reached" is what a probe found now."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from lab.config.targets import Source

PROBE_TIMEOUT_S = 5.0


def url_answers(url: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """(answers, detail) for a HEAD request with a timeout in seconds: ('HTTP 200') or the reason."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return True, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(getattr(exc, "reason", exc))


def first_silent(sources: Sequence[tuple[str, Sequence[str]]], timeout: float = PROBE_TIMEOUT_S) -> str:
    """For sources given as (what, alternative URLs): "" when each answers at one of its URLs, else
    why the first that does not: "WHAT cannot be reached from this host (URL: detail; ...)". Asks
    each URL once (HEAD, timeout seconds each)."""
    for what, urls in sources:
        tried = []
        for url in urls:
            ok, detail = url_answers(url, timeout)
            if ok:
                break
            tried.append(f"{url}: {detail}")
        else:
            return f"{what} cannot be reached from this host ({'; '.join(tried) or 'no URL set'})"
    return ""


def sources_silent(sources: Sequence[Source], url_of: Callable[[str], str], has_box: bool) -> str:
    """first_silent() over a target's sources (Target.sources): those needed at every lab.up, and
    those of the build too unless has_box. url_of(setting key) gives the URL a setting holds."""
    wanted = [src for src in sources if src.needed != "build" or not has_box]
    return first_silent([(src.what, [_under(url_of(key), src.path) for key in src.settings]) for src in wanted])


def _under(url: str, path: str) -> str:
    return f"{url.rstrip('/')}/{path}" if path else url
