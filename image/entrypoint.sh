#!/usr/bin/env bash
# Container entry point: `docker run IMAGE <verb> ...` runs `dream-job <verb> ...`.
#
# An executable as the first argument runs as given instead (`docker run IMAGE bash -c '...'`,
# `torchrun ...`, `python ...`): RunPod starts SkyPilot's pods as `<entrypoint> bash -c '<init>'`,
# so the entry point must hand a shell command line to the shell. SkyPilot on VM clouds replaces
# the entry point with `/bin/bash` anyway. Verbs are never executables on PATH, so the check
# cannot take a verb for a program.
set -euo pipefail

if [[ $# -gt 0 && $1 != -* ]] && type -P -- "$1" > /dev/null; then
    exec "$@"
fi
exec dream-job "$@"
