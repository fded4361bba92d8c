#!/bin/sh
# Install Debian's chromium (for the web app's browser test) when it is missing and we are root.
# Never downloads a browser through Playwright. Exits 0 when chromium is present or cannot be installed
# (the browser test then skips), so `make test` works for non-root users too.
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure_chromium: /usr/bin/chromium missing and not root; the browser test will be skipped" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: no apt-get on this system; the browser test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q chromium
