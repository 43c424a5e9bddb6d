#!/usr/bin/env bash
# Regenerates docs/site.png, the README's screenshot of `prunebench site`: the LeNet-300-100 leaderboard page
# of the site built from the committed store, in headless Chromium at 1280x900.
#
#     . .venv/bin/activate && benchmarks/site_screenshot.sh [STORE] [PNG]
#
# STORE (default leaderboards/foundation/runs.sqlite) is copied first (sqlite's backup API: a consistent copy
# even while a run writes to it) into a temporary folder, under the same relative path, so the page shows the
# store path and rerun commands as they read in the repository. Needs `chromium` on PATH (Debian: apt-get
# install -y chromium); runs as root too (--no-sandbox).
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-leaderboards/foundation/runs.sqlite}
png=$(realpath -m "${2:-docs/site.png}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/leaderboards/foundation" "$(dirname "$png")"
echo "+ copy $store -> $work/leaderboards/foundation/runs.sqlite"
python - "$store" "$work/leaderboards/foundation/runs.sqlite" <<'EOF'
import sqlite3
import sys

source = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
target = sqlite3.connect(sys.argv[2])
source.backup(target)
target.close()
source.close()
EOF
echo "+ (cd $work && prunebench site --out site --db leaderboards/foundation/runs.sqlite)"
(cd "$work" && OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} prunebench site --out site --db leaderboards/foundation/runs.sqlite)
echo "+ chromium --headless --screenshot=$png --window-size=1280,900 file://$work/site/lenet300.html"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$work/profile" \
  --screenshot="$png" --window-size=1280,900 "file://$work/site/lenet300.html" 2>/dev/null
echo "wrote $png ($(( $(stat -c %s "$png") / 1024 )) KB)"
