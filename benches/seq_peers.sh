#!/usr/bin/env bash
# The sequence classifier against RDP, SINTAX and blastn (benches/seq_peers.py): installs the
# peers from Debian's archive when missing, then runs on the project's cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
need=()
for p in rdp-classifier vsearch ncbi-blast+ time microbiomeutil-data; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
    echo "installing ${need[*]} ..."
    apt-get install -y -q "${need[@]}" >/dev/null
fi
bash scripts/cluster.sh start >/dev/null
exec .genome/venv/bin/python benches/seq_peers.py "$@"
