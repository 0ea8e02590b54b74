#!/bin/sh
# Generate ./configure. Automake does not install its TAP driver by itself.
set -e
cd "$(dirname "$0")"
mkdir -p build-aux m4
cp "$(automake --print-libdir)/tap-driver.sh" build-aux/tap-driver.sh
autoreconf -fi
