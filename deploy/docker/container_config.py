"""The image's TorchServe config: one of the repository's configs with only what a container changes.

    python container_config.py serve/config.properties > /home/model-server/config.properties

Inside a container loopback is the container's own, so the inference API (8080) and the read-only
metrics (8082) listen on every interface of the container to be reachable through its published
ports; the management API stays on the container's loopback (no one outside needs it). The model
store is the image's. Everything else (batching, limits, token authorization, no model API) is the
source config's. Each rewritten line must be there exactly once, or the build fails.
"""

import re
import sys

MODEL_STORE = "/home/model-server/model_store"  # matches allowed_urls' .*/model_store/ in both configs
REWRITES = {
    "inference_address": "http://0.0.0.0:8080",
    "management_address": "http://127.0.0.1:8081",
    "metrics_address": "http://0.0.0.0:8082",
    "model_store": MODEL_STORE,
}


def container_config(text: str) -> str:
    for key, value in REWRITES.items():
        text, count = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        if count != 1:
            raise SystemExit(f"error: expected one {key}= line in the source config, found {count}")
    return text


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as source:
        sys.stdout.write(container_config(source.read()))
