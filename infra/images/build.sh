#!/usr/bin/env bash
# infra/images/build.sh [debug|release]: one OCI image per binary (gateway, chat-service, delivery-worker,
# chatctl) into target/images, an OCI image layout whose tags are the binaries' names, assembled without a
# container engine by Debian's umoci from target/<profile>/<binary> and the shared libraries it needs (ldd).
#
# Each image holds: the binary in /usr/local/bin, the entry point (entrypoint.sh, run by /bin/sh, which is
# Debian's dash: the only other program), the shared libraries of both with the dynamic loader, /etc/passwd
# and /etc/group naming the user `chat` (10001), /etc/nsswitch.conf, the system's CA bundle (Debian's
# ca-certificates: what MSK's TLS certificates chain to, see KAFKA_TLS), /tmp, and /run/secrets owned by `chat`
# and declared a volume (ECS copies it, with its owner, into the task's volume of that path, so that the
# entry point can write secret files while the root filesystem stays read-only).
#
# Push one to a registry with skopeo, e.g.
#   skopeo copy oci:target/images:gateway docker://ACCOUNT.dkr.ecr.REGION.amazonaws.com/chat/gateway:$(git rev-parse --short HEAD)
# Needs root (file owners in the layers are set with chown) and the binaries built
# (cargo build --bins, or --release).
set -euo pipefail
source "$(dirname "$0")/../local/env.sh"

PROFILE="${1:-release}"
case "$PROFILE" in debug | release) ;; *) die "usage: build.sh [debug|release]" ;; esac
[ "$(id -u)" = 0 ] || die "build.sh runs as root: it sets the owners of the images' files"
"$ROOT/infra/local/infra-tools.sh" images

BIN="$ROOT/target/$PROFILE"
LAYOUT="$ROOT/target/images"
WORK="$ROOT/target/images-build"
APP_UID=10001
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"

# What differs between the images: listen addresses (0.0.0.0, the task's network) and their ports.
declare -A ENV PORTS
ENV[gateway]="GATEWAY_WS_ADDR=0.0.0.0:8080 GATEWAY_GRPC_ADDR=0.0.0.0:50061"
PORTS[gateway]="8080/tcp 50061/tcp"
ENV[chat-service]="CHAT_GRPC_ADDR=0.0.0.0:50051"
PORTS[chat-service]="50051/tcp"
ENV[delivery-worker]="WORKER_METRICS_ADDR=0.0.0.0:9100"
PORTS[delivery-worker]="9100/tcp"
ENV[chatctl]=""
PORTS[chatctl]=""
IMAGES=(gateway chat-service delivery-worker chatctl)

# copy_with_libs ROOTFS FILE DEST: FILE to ROOTFS/DEST, and every shared library it loads (and the loader) to
# the same path in ROOTFS as on this machine.
copy_with_libs() {
  local rootfs="$1" file="$2" dest="$3" lib
  install -D -m 0755 "$file" "$rootfs$dest"
  while read -r lib; do
    [ -e "$rootfs$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done < <(ldd "$file" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
}

rm -rf "$LAYOUT" "$WORK"
mkdir -p "$WORK"
umoci init --layout "$LAYOUT"
for name in "${IMAGES[@]}"; do
  [ -x "$BIN/$name" ] || die "$BIN/$name is missing: build it first (cargo build --bins${PROFILE/debug/}${PROFILE/release/ --release})"
  log "image $name from $BIN/$name"
  image="$LAYOUT:$name"
  bundle="$WORK/$name"
  umoci new --image "$image"
  umoci unpack --image "$image" "$bundle" >/dev/null
  rootfs="$bundle/rootfs"

  copy_with_libs "$rootfs" "$BIN/$name" "/usr/local/bin/$name"
  copy_with_libs "$rootfs" "$(readlink -f /bin/sh)" /bin/sh
  install -m 0755 "$ROOT/infra/images/entrypoint.sh" "$rootfs/usr/local/bin/entrypoint"
  mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/run/secrets"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nchat:x:%s:%s:chat:/nonexistent:/sbin/nologin\n' $APP_UID $APP_UID >"$rootfs/etc/passwd"
  printf 'root:x:0:\nchat:x:%s:\n' $APP_UID >"$rootfs/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  install -D -m 0644 "$(readlink -f /etc/ssl/certs/ca-certificates.crt)" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  chmod 1777 "$rootfs/tmp"
  chown "$APP_UID:$APP_UID" "$rootfs/run/secrets"
  chmod 0700 "$rootfs/run/secrets"
  umoci repack --image "$image" "$bundle" >/dev/null

  args=(--image "$image" --author "chat platform (infra/images/build.sh)"
    --os linux --architecture amd64
    --config.user "$APP_UID:$APP_UID" --config.workingdir /
    --config.entrypoint /usr/local/bin/entrypoint --config.entrypoint "/usr/local/bin/$name"
    --config.env PATH=/usr/local/bin:/bin --config.env RUST_LOG=info --config.env SECRETS_DIR=/run/secrets
    --config.volume /run/secrets
    --config.label "org.opencontainers.image.title=$name"
    --config.label "org.opencontainers.image.version=$VERSION"
    --config.label "org.opencontainers.image.revision=$REVISION"
    --config.label "chat.build-profile=$PROFILE")
  for e in ${ENV[$name]}; do args+=(--config.env "$e"); done
  for p in ${PORTS[$name]}; do args+=(--config.exposedports "$p"); done
  umoci config "${args[@]}"
done
umoci gc --layout "$LAYOUT"
rm -rf "$WORK"
log "images in $LAYOUT (OCI layout): ${IMAGES[*]}"
