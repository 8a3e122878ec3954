#!/bin/sh
# TEST DOUBLE: NOT macOS. Stands in for the pkg's /usr/local/share/prx/uninstall.sh on
# the loopback sshd of vm/tests/ssh_loopback_not_macos.rs; state lives in $PRX_DOUBLES_STATE.
# Unloads what the kmutil double loaded, removes what the installer double put in
# $S/root and forgets the receipt (pkgutil double),
# unless told to misbehave ($S/uninstall-leaves-loaded).
S="$PRX_DOUBLES_STATE"; echo "$(basename "$0") $*" >> "$S/calls"
[ -f "$S/uninstall-leaves-loaded" ] || rm -f "$S"/loaded/*
touch "$S/forgotten"
rm -f "$S/root/usr/local/bin/prxctl" "$S/root/usr/local/share/prx/uninstall.sh"
echo "prx is uninstalled."
