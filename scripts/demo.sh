#!/usr/bin/env bash
# The main job: embedded engine + models + live synthetic stream + alerts. Ctrl-C stops it.
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
exec sentinel demo "$@"
