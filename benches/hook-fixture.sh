# The node phoenix-hook is measured on, for benches/hook.sh and
# scripts/hook-order.sh (sourced; needs root for the mount namespace).
#
#   hook_fixture DIR      lay the node out in DIR (empty, made by the caller)
#   hook_ns DIR CMD...    run CMD where DIR/pve/quickOS is a mount point
#
# The JSON is the reference Phoenix configuration (../shared/reference),
# with /mnt/pve rewritten to DIR/pve. Container 101 has three bind mounts
# on storage "quickOS", one of them the CA's whole state directory with
# its secrets, as on a node where the hook warns that the mount exposes
# them (a warning: the start goes on). Guest 4242 is in no config.
# DIR/toolkit.json points the hook at all of it (PHOENIX_CONFIG).

HOOK_REF=${HOOK_REF:-../shared/reference/phoenix-etc}

hook_fixture() {
  local dir=$1 root=$1/pve f
  [ -f "$HOOK_REF/phoenix_lxc_configs.json" ] || { echo "need $HOOK_REF" >&2; return 2; }
  mkdir -p "$dir/etc" "$root/quickOS/lxc-persistent-data/101/logs" \
    "$root/quickOS/lxc-persistent-data/101/ssl" "$root/quickOS/lxc-persistent-data/103/ssl"
  for f in phoenix_lxc_configs.json phoenix_vm_configs.json; do
    sed "s#/mnt/pve/#$root/#g" "$HOOK_REF/$f" >"$dir/etc/$f"
  done
  local ca=$root/quickOS/lxc-persistent-data/103/ssl
  mkdir -p "$ca/secrets" "$ca/public"
  echo pw >"$ca/provisioner_password.txt"
  echo key >"$ca/secrets/root_ca_key"
  chmod 600 "$ca/provisioner_password.txt" "$ca/secrets/root_ca_key"
  cat >"$dir/toolkit.json" <<JSON
{"phoenix_etc": "$dir/etc", "storage_root": "$root", "ca": {"state_dir": "$ca"}}
JSON
}

# The storage is made a mount point in a private mount namespace: nothing
# is mounted on the host.
hook_ns() {
  local dir=$1
  shift
  PHOENIX_CONFIG=$dir/toolkit.json unshare --mount --propagation private -- \
    sh -c 'mount --bind "$1/pve/quickOS" "$1/pve/quickOS" && shift && exec "$@"' sh "$dir" "$@"
}
