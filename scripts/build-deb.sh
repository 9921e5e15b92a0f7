#!/usr/bin/env bash
# Build the phoenix-hooks Debian package with dpkg-deb (Debian's own
# archiver): no cargo-deb to compile on every fresh CI machine, and the
# whole file layout in one table below.
#
#   scripts/build-deb.sh [--bin-dir DIR] [--docs DIR] [--out DIR] [--compress xz|gzip|zstd|none]
#
# Without --bin-dir it builds release binaries; without --docs it generates
# the man pages and completions from the clap definitions
# (cargo run --example gen-docs). Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir= docs= out=target/debian compress=xz
while (($#)); do
  case $1 in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --docs) docs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --compress) compress=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

BINARIES=(phoenix-ca phoenix-deploy phoenix-hook phoenix-mount phoenix-renew phoenix-swarm)

if [ -z "$bin_dir" ]; then
  cargo build --release --locked --quiet
  bin_dir=target/release
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/phoenix-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
if [ -z "$docs" ]; then
  docs=$work/docs
  cargo run --quiet --locked --example gen-docs -- "$docs"
fi

version=$("$bin_dir/phoenix-ca" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
root=$work/root

# --- The layout: SOURCE  DESTINATION  MODE ---------------------------------
# Units of the package's own in /usr/lib/systemd/system; drop-ins that change
# other packages' units (docker, step-ca) only as examples under
# /usr/share/phoenix-hooks: installing the package enables nothing, the
# operator links what the machine needs (README.md, "Install").
layout() {
  local b
  for b in "${BINARIES[@]}"; do echo "$bin_dir/$b usr/bin/$b 0755"; done
  for u in units/*.service units/*.timer units/*.target; do
    echo "$u usr/lib/systemd/system/${u#units/} 0644"
  done
  echo "units/phoenix-renew.service.d/phoenix-sync.conf usr/lib/systemd/system/phoenix-renew.service.d/phoenix-sync.conf 0644"
  echo "units/docker.service.d/phoenix-ca-wait.conf usr/share/phoenix-hooks/docker.service.d/phoenix-ca-wait.conf 0644"
  echo "units/step-ca.service.d/phoenix-ca-publish.conf usr/share/phoenix-hooks/step-ca.service.d/phoenix-ca-publish.conf 0644"
  echo "packaging/tmpfiles.conf usr/lib/tmpfiles.d/phoenix-hooks.conf 0644"
  echo "hooks/phoenix-hook usr/share/phoenix-hooks/phoenix-hook 0755"
  echo "packaging/toolkit.json usr/share/phoenix-hooks/examples/toolkit.json 0644"
  echo "packaging/toolkit.json etc/phoenix/toolkit.json 0644"
  echo "README.md usr/share/doc/phoenix-hooks/README.md 0644"
  for d in docs/*.md; do echo "$d usr/share/doc/phoenix-hooks/${d#docs/} 0644"; done
  echo "packaging/copyright usr/share/doc/phoenix-hooks/copyright 0644"
  echo "packaging/lintian-overrides usr/share/lintian/overrides/phoenix-hooks 0644"
  for m in "$docs"/man/man1/*.1; do echo "$m usr/share/man/man1/${m##*/} 0644"; done
  for b in "${BINARIES[@]}"; do
    echo "$docs/completions/bash/$b usr/share/bash-completion/completions/$b 0644"
    echo "$docs/completions/zsh/_$b usr/share/zsh/vendor-completions/_$b 0644"
    echo "$docs/completions/fish/$b.fish usr/share/fish/vendor_completions.d/$b.fish 0644"
  done
}
# The generator is the mount binary under the name systemd looks for.
GENERATOR=usr/lib/systemd/system-generators/phoenix-mount
CONFFILES=(/etc/phoenix/toolkit.json)
# -----------------------------------------------------------------------------

while read -r src dest mode; do
  [ -f "$src" ] || { echo "build-deb.sh: missing '$src'" >&2; exit 1; }
  install -D -m "$mode" "$src" "$root/$dest"
done < <(layout)
for b in "${BINARIES[@]}"; do
  # What dh_strip does: debug info out of the package.
  strip --remove-section=.comment --remove-section=.note --strip-unneeded "$root/usr/bin/$b"
done
gzip -9n "$root"/usr/share/man/man1/*.1
mkdir -p "$root/${GENERATOR%/*}"
ln -s /usr/bin/phoenix-mount "$root/$GENERATOR"

mkdir -p "$root/DEBIAN"
printf '%s\n' "${CONFFILES[@]}" > "$root/DEBIAN/conffiles"
install -m 0755 packaging/postinst packaging/postrm "$root/DEBIAN/"
glibc=$(objdump -T "$root"/usr/bin/* | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: phoenix-hooks
Version: $version
Architecture: $arch
Maintainer: Phoenix hooks maintainers <root@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: libc6 (>= $glibc)
Recommends: systemd, ca-certificates
Suggests: step-cli, nfs-common
Section: admin
Priority: optional
Description: boot-order hooks for a Proxmox VE private cloud
 Proxmox hookscripts and systemd units so that a private smallstep Step-CA,
 the guests that trust it, their TLS certificates and a Docker Swarm come
 up in the right order on every boot: a readiness token bound to the CA's
 boot generation, bounded waits, atomic certificate renewal, an idempotent
 swarm and the stacks deployed on it. Installing the package enables
 nothing; see README.md.
CONTROL

mkdir -p "$out"
deb=$out/phoenix-hooks_${version}_${arch}.deb
dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >/dev/null
echo "$deb"
