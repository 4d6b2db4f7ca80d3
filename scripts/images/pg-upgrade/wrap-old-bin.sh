#!/bin/sh
# wrap-old-bin.sh OLD: move the old binaries to bin.real and put a wrapper of the same
# name in bin that runs the real one with the old libraries on its library path. The
# compiled-in share and lib folders stay valid (PostgreSQL falls back to them when the
# binary's folder is not the compiled-in one).
set -eu
bin=/usr/lib/postgresql/"$1"/bin
libs=/usr/lib/postgresql/"$1"/private-libs
mv "$bin" "$bin.real"
mkdir "$bin"
for f in "$bin.real"/*; do
  name=$(basename "$f")
  if [ -L "$f" ]; then  # postmaster -> postgres
    ln -s "$(readlink "$f")" "$bin/$name"
    continue
  fi
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s/%s "$@"\n' "$libs" "$bin.real" "$name" >"$bin/$name"
  chmod 755 "$bin/$name"
done
