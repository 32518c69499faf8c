"""Docker HEALTHCHECK: exit 0 when TorchServe's /ping on 127.0.0.1:8080 says Healthy.

Standard library only. With token authorization on (an image built with CONFIG=serve/config.public.properties)
TorchServe 0.12 wants the inference key even on /ping: it is read from key_file.json in the working
directory, where TorchServe writes it at start-up.
"""

import json
import sys
import urllib.request

URL = "http://127.0.0.1:8080/ping"


def main() -> int:
    headers = {}
    try:
        with open("key_file.json") as keys:
            headers["Authorization"] = f"Bearer {json.load(keys)['inference']['key']}"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # token authorization off: no key file
    try:
        with urllib.request.urlopen(urllib.request.Request(URL, headers=headers), timeout=4) as response:
            healthy = json.load(response).get("status") == "Healthy"
    except (OSError, ValueError, AttributeError):
        healthy = False
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
