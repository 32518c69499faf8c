#!/bin/sh
# The image's entry point: TorchServe in the foreground (the container lives as long as it does).
#   no arguments:  the baked-in model with /home/model-server/config.properties (plain Docker, Kubernetes)
#   torchserve ...: the command KServe's TorchServe runtime passes (its bundle's config and model store)
#   anything else: run as given (a shell for debugging)
set -eu
if [ "$#" -eq 0 ]; then
    set -- torchserve --start --ts-config /home/model-server/config.properties
fi
if [ "$1" = torchserve ]; then
    exec "$@" --foreground --ncs
fi
exec "$@"
