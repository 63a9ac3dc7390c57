#!/usr/bin/env python3
"""The container's health check: exit 0 when the node's ``/health/ready`` answers ``ok``.

Installed in the images as ``cad-node-healthcheck`` (Dockerfile ``HEALTHCHECK`` and the
compose file's ``healthcheck``). Readiness means the journal answers and the Storage SCP
listens; the admin API needs no token for it. Standard library only, no proxy (a site's
``HTTP_PROXY`` must not carry a loopback request), and exit status 1 for "unhealthy" as
Docker expects (2 is reserved). ``CAD_NODE_HEALTH_URL`` overrides the URL, e.g. when
``admin.port`` is not 8080.
"""

import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/health/ready"
TIMEOUT_SECONDS = 5.0


def check(url: str) -> tuple[bool, str]:
    """Whether ``url`` answers 200 with ``{"status": "ok"}``, and what it said."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code} from {url}"
    except (OSError, ValueError) as exc:
        return False, f"no answer from {url}: {exc}"
    status = body.get("status") if isinstance(body, dict) else None
    checks = body.get("checks", {}) if isinstance(body, dict) else {}
    return status == "ok", f"{status} {json.dumps(checks, sort_keys=True)}"


def main() -> int:
    healthy, detail = check(os.environ.get("CAD_NODE_HEALTH_URL", DEFAULT_URL))
    print(("healthy: " if healthy else "unhealthy: ") + detail)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
