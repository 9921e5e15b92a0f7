#!/usr/bin/env bash
# Build the phoenix-hooks Debian package with dpkg-deb (Debian's own
# archiver): no cargo-deb to compile on every fresh CI machine, and the
# whole file layout in one table below. What debhelper would do is done
# here by hand, each step named after the dh_ tool it stands for; lintian
# finds no error or warning in the result (tests/package.rs runs it).
#
#   scripts/build-deb.sh [--bin-dir DIR] [--docs DIR] [--out DIR] [--compress xz|gzip|zstd|none]
#
# Without --bin-dir it builds release binaries; without --docs it generates
# the man pages and completions from the clap definitions with the
# gen-docs example, built in the same release tree (no second, debug
# build). The version is packaging/changelog's newest entry,
# whose upstream part must be the binaries' version. Depends: from the
# binaries' shared libraries, by dpkg-shlibdeps (dpkg-dev) when present.
# Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "build-deb.sh: $*" >&2; exit 1; }

bin_dir= docs= out=target/debian compress=xz
while (($#)); do
  case $1 in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --docs) docs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --compress) compress=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

BINARIES=(phoenix-ca phoenix-deploy phoenix-hook phoenix-mount phoenix-renew phoenix-swarm)
PACKAGE=phoenix-hooks

# The release tree only (`cargo run --example` built a whole debug tree).
# Two builds, not one: building the example with the binaries would give a
# crate they share the features of a dev-dependency (rustix's "fs", from
# tempfile) and so build the binaries anew. Apart, the binaries are those
# of scripts/build-release.sh (phoenix-hook and phoenix-ca static PIEs)
# and only gen-docs (and the library, with those features) is built for
# the docs; linked without LTO (`cargo rustc` flags apply to it alone): it
# runs once, at build time.
release=${CARGO_TARGET_DIR:-target}/release
[ -n "$bin_dir" ] || bash scripts/build-release.sh --locked
[ -n "$docs" ] || cargo rustc --release --locked --quiet --example gen-docs -- -C lto=off
bin_dir=${bin_dir:-$release}
work=$(mktemp -d "${TMPDIR:-/tmp}/phoenix-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
if [ -z "$docs" ]; then
  docs=$work/docs
  "$release/examples/gen-docs" "$docs"
fi

# The version: packaging/changelog's newest entry (0.1.0-1: the binaries'
# version, then the packaging's revision).
version=$(sed -n "1s/^$PACKAGE (\([^)]*\)).*/\1/p" packaging/changelog)
upstream=$("$bin_dir/phoenix-ca" --version | awk '{print $2}')
[ "${version%-*}" = "$upstream" ] ||
  die "packaging/changelog's newest entry is '$version', the binaries are $upstream: add an entry for $upstream-1 at its top"
arch=$(dpkg --print-architecture)
# As debhelper lays it out: debian/control, and the package's tree in
# debian/phoenix-hooks (where dpkg-shlibdeps expects binaries).
root=$work/debian/$PACKAGE
doc=usr/share/doc/$PACKAGE

# --- The layout: SOURCE  DESTINATION  MODE ---------------------------------
# Units of the package's own in /usr/lib/systemd/system; drop-ins that change
# other packages' units (docker, step-ca) only as examples under
# /usr/share/phoenix-hooks: installing the package enables nothing, the
# operator links what the machine needs (README.md, "Install"), and the
# preset disables them all for `systemctl preset-all`.
layout() {
  local b
  for b in "${BINARIES[@]}"; do echo "$bin_dir/$b usr/bin/$b 0755"; done
  for u in units/*.service units/*.timer units/*.target; do
    echo "$u usr/lib/systemd/system/${u#units/} 0644"
  done
  echo "units/phoenix-renew.service.d/phoenix-sync.conf usr/lib/systemd/system/phoenix-renew.service.d/phoenix-sync.conf 0644"
  echo "units/docker.service.d/phoenix-ca-wait.conf usr/share/phoenix-hooks/docker.service.d/phoenix-ca-wait.conf 0644"
  echo "units/step-ca.service.d/phoenix-ca-publish.conf usr/share/phoenix-hooks/step-ca.service.d/phoenix-ca-publish.conf 0644"
  echo "packaging/preset usr/lib/systemd/system-preset/80-phoenix-hooks.preset 0644"
  echo "packaging/tmpfiles.conf usr/lib/tmpfiles.d/phoenix-hooks.conf 0644"
  echo "hooks/phoenix-hook usr/share/phoenix-hooks/phoenix-hook 0755"
  echo "packaging/toolkit.json usr/share/phoenix-hooks/examples/toolkit.json 0644"
  echo "packaging/toolkit.json etc/phoenix/toolkit.json 0644"
  # Compressed below (dh_installdocs, dh_installchangelogs, dh_compress).
  echo "README.md $doc/README.md 0644"
  for d in docs/*.md; do echo "$d $doc/${d#docs/} 0644"; done
  echo "packaging/changelog $doc/changelog.Debian 0644"
  echo "packaging/copyright $doc/copyright 0644"
  echo "packaging/lintian-overrides usr/share/lintian/overrides/$PACKAGE 0644"
  for m in "$docs"/man/man1/*.1; do echo "$m usr/share/man/man1/${m##*/} 0644"; done
  for b in "${BINARIES[@]}"; do
    echo "$docs/completions/bash/$b usr/share/bash-completion/completions/$b 0644"
    echo "$docs/completions/zsh/_$b usr/share/zsh/vendor-completions/_$b 0644"
    echo "$docs/completions/fish/$b.fish usr/share/fish/vendor_completions.d/$b.fish 0644"
  done
}
# The generator is the mount binary under the name systemd looks for; a
# relative link (dh_link), so it holds inside any root.
GENERATOR=usr/lib/systemd/system-generators/phoenix-mount
GENERATOR_TARGET=../../../bin/phoenix-mount
CONFFILES=(/etc/phoenix/toolkit.json)
# -----------------------------------------------------------------------------

while read -r src dest mode; do
  [ -f "$src" ] || die "missing '$src'"
  install -D -m "$mode" "$src" "$root/$dest"
done < <(layout)
for b in "${BINARIES[@]}"; do
  # What dh_strip does: debug info out of the package.
  strip --remove-section=.comment --remove-section=.note --strip-unneeded "$root/usr/bin/$b"
done
# dh_compress: man pages, the changelog and the docs; never the copyright.
gzip -9n "$root"/usr/share/man/man1/*.1 "$root/$doc"/*.md "$root/$doc/changelog.Debian"
mkdir -p "$root/${GENERATOR%/*}"
ln -s "$GENERATOR_TARGET" "$root/$GENERATOR"
[ -x "$root/$GENERATOR" ] || die "$GENERATOR -> $GENERATOR_TARGET does not resolve"

# A binary linked statically (the release's phoenix-hook and phoenix-ca,
# static PIEs) carries glibc's code, so the control file names the source
# it came from, as the libc6-dev it was linked with (Built-Using, Debian
# policy 7.8); and lintian takes a static PIE, an ELF shared object with no
# NEEDED, for a shared library that lacks its prerequisites (as it does
# ldconfig, libc-bin's override), which it is not.
built_using=
for b in "${BINARIES[@]}"; do
  if ! grep -q '(NEEDED)' <<<"$(readelf -d "$root/usr/bin/$b")"; then
    built_using="Built-Using: glibc (= $(dpkg-query -W -f='${source:Version}' libc6-dev))"$'\n'
    printf '\n# usr/bin/%s is a static PIE (scripts/build-release.sh), not a library.\n%s\n' \
      "$b" "$PACKAGE: shared-library-lacks-prerequisites [usr/bin/$b]" \
      >>"$root/usr/share/lintian/overrides/$PACKAGE"
  fi
done

# --- DEBIAN/ -----------------------------------------------------------------
mkdir -p "$root/DEBIAN"
printf '%s\n' "${CONFFILES[@]}" > "$root/DEBIAN/conffiles"

# The maintainer scripts, with the unit lists dh_installsystemd would put
# in: every unit (stopped on removal), and those with an [Install] section
# (their enable links tracked by deb-systemd-helper, removed on purge).
all_units=() enable_units=()
for u in "$root"/usr/lib/systemd/system/*.{service,timer,target}; do
  all_units+=("'${u##*/}'")
  grep -q '^\[Install\]' "$u" && enable_units+=("${u##*/}")
done
for s in postinst prerm postrm; do
  sed -e "s/#ALL_UNITS#/${all_units[*]}/" \
    -e "s/\"#ENABLE_UNITS#\"/\"${enable_units[*]}\"/" \
    -e "s/#ENABLE_UNITS#/$(printf "'%s' " "${enable_units[@]}" | sed 's/ $//')/" \
    "packaging/$s" > "$root/DEBIAN/$s"
  chmod 0755 "$root/DEBIAN/$s"
  ! grep -q '#[A-Z_]*#' "$root/DEBIAN/$s" || die "packaging/$s: a placeholder left"
done

# dh_shlibdeps: Depends from the binaries' shared libraries.
depends=$(
  if command -v dpkg-shlibdeps >/dev/null; then
    # With the symbols files of the libraries' packages: the lowest
    # version that has every symbol the binaries use.
    printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$PACKAGE" "$PACKAGE" > "$work/debian/control"
    (cd "$work" && dpkg-shlibdeps -O -e"${BINARIES[@]/#/debian/$PACKAGE/usr/bin/}") |
      sed -n 's/^shlibs:Depends=//p'
  else
    # Without dpkg-dev: each library ldd resolves, by the package dpkg -S
    # says owns it; libc6 at the newest GLIBC_ symbol version the binaries
    # need, the others unversioned (dpkg-shlibdeps gives a lower bound).
    echo "build-deb.sh: no dpkg-shlibdeps (apt-get install dpkg-dev): Depends from ldd and dpkg -S" >&2
    glibc=$(objdump -T "$root"/usr/bin/* | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -1)
    ldd "$root"/usr/bin/* | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
      while read -r lib; do
        dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null ||
          dpkg -S "${lib#/usr}" 2>/dev/null || die "no package owns $lib"
      done | cut -d: -f1 | sort -u |
      sed "s/^libc6\$/libc6 (>= $glibc)/" | paste -sd, | sed 's/,/, /g'
  fi
)
[[ $depends == libc6* ]] || die "Depends '$depends' does not name libc6"

cat > "$root/DEBIAN/control" <<CONTROL
Package: $PACKAGE
Version: $version
Architecture: $arch
Maintainer: Phoenix hooks maintainers <phoenix-hooks@proxmox-phoenix.org>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $depends
${built_using}Recommends: systemd, ca-certificates
Suggests: step-cli, nfs-common
Section: admin
Priority: optional
Description: boot-order hooks for a Proxmox VE private cloud
 Proxmox hookscripts and systemd units so that a private smallstep Step-CA,
 the guests that trust it, their TLS certificates and a Docker Swarm come
 up in the right order on every boot: a readiness token bound to the CA's
 boot generation, bounded waits, atomic certificate renewal, an idempotent
 swarm and the stacks deployed on it. Installing the package enables
 nothing; see README.md.gz in /usr/share/doc/phoenix-hooks.
CONTROL

# dh_md5sums: every file but the conffiles (dpkg keeps their sums itself).
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
  grep -vxF -f <(printf '%s\n' "${CONFFILES[@]#/}") | xargs -d '\n' md5sum) > "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb=$out/${PACKAGE}_${version}_${arch}.deb
dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >/dev/null
echo "$deb"
