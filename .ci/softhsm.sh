#!/usr/bin/env bash
# Sourced by .ci/run: installs SoftHSM2 if missing, initialises a throw-away token in a temp dir
# and exports what the pkcs11 tests of anya-hsm read. `stop_softhsm` removes the token again.
# shellcheck shell=bash

if ! command -v softhsm2-util >/dev/null 2>&1 || ! command -v pkcs11-tool >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq softhsm2 opensc >/dev/null
fi

softhsm_module=""
for candidate in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*-linux-gnu/softhsm/libsofthsm2.so \
    /usr/lib64/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    if [ -f "$candidate" ]; then
        softhsm_module="$candidate"
        break
    fi
done
if [ -z "$softhsm_module" ]; then
    echo "softhsm.sh: libsofthsm2.so not found after installing softhsm2" >&2
    return 1 2>/dev/null || exit 1
fi

ANYA_SOFTHSM_DIR="$(mktemp -d -t anya-softhsm.XXXXXX)"
mkdir -p "$ANYA_SOFTHSM_DIR/tokens"
cat >"$ANYA_SOFTHSM_DIR/softhsm2.conf" <<CONF
directories.tokendir = $ANYA_SOFTHSM_DIR/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$ANYA_SOFTHSM_DIR/softhsm2.conf"
export ANYA_TEST_PKCS11_MODULE="$softhsm_module"
export ANYA_TEST_PKCS11_TOKEN_LABEL="anya-test"
export ANYA_TEST_PKCS11_PIN="anya-user-$RANDOM$RANDOM"
anya_softhsm_so_pin="anya-so-$RANDOM$RANDOM"
softhsm2-util --init-token --free --label "$ANYA_TEST_PKCS11_TOKEN_LABEL" \
    --so-pin "$anya_softhsm_so_pin" --pin "$ANYA_TEST_PKCS11_PIN" >/dev/null
unset anya_softhsm_so_pin softhsm_module candidate

stop_softhsm() {
    if [ -n "${ANYA_SOFTHSM_DIR:-}" ] && [ -d "$ANYA_SOFTHSM_DIR" ]; then
        rm -rf -- "$ANYA_SOFTHSM_DIR"
    fi
}
