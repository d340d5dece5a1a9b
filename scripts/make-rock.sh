#!/bin/sh
# scripts/make-rock.sh VERSION OUTDIR: packs rockspec/tether-VERSION.rockspec and the
# checkout into OUTDIR/tether-VERSION.src.rock, as `luarocks pack` would from the release
# tag but without the network: a zip holding the rockspec and a directory named after the
# source URL's last path element ("tether", from .../tether.git) with the source tree.
# The tree is what git tracks plus new files git does not ignore (outside a git checkout:
# rockspec, src, lua, bin, docs, examples and the top-level *.md), so no build product
# (src/*.o, tether/core.so, build/) gets in. `luarocks install` of the file builds offline.
set -eu
version=$1
out=$2
spec=rockspec/tether-$version.rockspec
[ -f "$spec" ] || { echo "make-rock: no $spec" >&2; exit 1; }
command -v zip >/dev/null || { echo "make-rock: zip is missing (Debian: zip)" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd -P)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tether-rock.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/tether"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z -co --exclude-standard | xargs -0 sh -c \
    'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh | tar --null -T - -cf - | tar -C "$tmp/tether" -xf -
else
  tar -cf - rockspec src lua bin docs examples ./*.md | tar -C "$tmp/tether" -xf -
fi
cp "$spec" "$tmp/"
rm -f "$out/tether-$version.src.rock"
(cd "$tmp" && zip -qr "$out/tether-$version.src.rock" "tether-$version.rockspec" tether)
echo "$out/tether-$version.src.rock"
