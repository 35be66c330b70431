#!/usr/bin/env bash
# Installs what vprompt needs on a fresh Debian machine, skipping what is already there:
# FFmpeg's libraries and tools, clang (for the FFmpeg bindings), the ONNX Runtime library from the PyPI
# wheel into .deps/onnxruntime/, and the Python packages of the cross-checks into .deps/python/.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION="${ORT_VERSION:-1.32.0}"
need_apt=()
pkg-config --exists libavcodec libavformat libswscale 2>/dev/null || need_apt+=(libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev libswresample-dev pkg-config)
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need_apt+=(ffmpeg)
command -v clang >/dev/null || need_apt+=(clang)
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang*.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -e .deps/onnxruntime/libonnxruntime.so ] || [ ! -e ".deps/onnxruntime/VERSION-$ORT_VERSION" ]; then
  echo "setup: fetching the onnxruntime $ORT_VERSION wheel for its library"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "onnxruntime==$ORT_VERSION"
  rm -rf .deps/onnxruntime && mkdir -p .deps/onnxruntime
  python3 - "$tmp" <<'PY'
import sys, zipfile, glob, os
whl = glob.glob(os.path.join(sys.argv[1], "onnxruntime-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        base = os.path.basename(n)
        if n.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            target = "libonnxruntime.so" if base.startswith("libonnxruntime.so") else base
            with open(os.path.join(".deps/onnxruntime", target), "wb") as f:
                f.write(z.read(n))
PY
  touch ".deps/onnxruntime/VERSION-$ORT_VERSION"
  rm -rf "$tmp"
fi

if [ ! -e .deps/python/.ok ] || [ tools/crosscheck/requirements.txt -nt .deps/python/.ok ]; then
  echo "setup: installing the cross-check Python packages into .deps/python"
  python3 -m pip install -q --target .deps/python -r tools/crosscheck/requirements.txt
  touch .deps/python/.ok
fi
echo "setup: ok"
