#!/bin/sh
# collect-libs.sh OLD: copy every shared library the old server tree links (its binaries,
# extensions and JIT provider) into /opt/crmops-old-libs, except the C runtime the new
# image's own (newer, backward compatible) copy serves.
set -eu
out=/opt/crmops-old-libs
mkdir -p "$out"
for f in /usr/lib/postgresql/"$1"/bin/* /usr/lib/postgresql/"$1"/lib/*.so /usr/lib/postgresql/"$1"/lib/*/*.so; do
  [ -f "$f" ] || continue
  ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.*|libm.so.*|libdl.so.*|libpthread.so.*|librt.so.*|libresolv.so.*|ld-linux*|libgcc_s.so.*|libstdc++.so.*) ;;
    *) cp -L "$lib" "$out/$(basename "$lib")" ;;
  esac
done
ls "$out" | wc -l >"$out/.count"
