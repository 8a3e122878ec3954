#!/bin/sh
# prx preinstall: packaging/scripts/preinstall.sh, with the placeholders filled in
# by `cargo xtask package`. Runs before the payload is laid down.
# $1: package path, $2: target location, $3: target volume (always / here:
# the Distribution allows the boot volume only).
#
# On an upgrade: stop the boot-time daemons (prxd first: it holds the kexts'
# controls open, and a kext with control clients refuses to stop; its
# LaunchDaemon plist is replaced by the payload) and unload the old kexts so that
# the new ones load cleanly. A kext that cannot be unloaded (not loaded, or in
# use) does not stop the upgrade: the new one takes over after the restart
# the installer asks for; this script says so. It never fails silently: the
# only failure is a missing system tool, and it is named.
root="${3:-/}"
root="${root%/}"
labels="@STOP_LABELS@"
kexts="@KEXTS@"

for tool in /usr/bin/sw_vers /bin/launchctl; do
    if [ ! -x "$root$tool" ]; then
        echo "prx preinstall: $tool is missing; cannot stop the old version" >&2
        exit 1
    fi
done
major=$("$root/usr/bin/sw_vers" -productVersion | cut -d. -f1)
case "$major" in
    ''|*[!0-9]*) major=10 ;;
esac

for label in $labels; do
    [ -f "$root/Library/LaunchDaemons/$label.plist" ] || continue
    if "$root/bin/launchctl" bootout "system/$label" 2>/dev/null; then
        echo "prx preinstall: stopped $label"
    else
        echo "prx preinstall: $label was not running"
    fi
done

for entry in $kexts; do
    name=${entry%%=*}
    id=${entry#*=}
    [ -d "$root/Library/Extensions/$name" ] || continue
    ok=1
    if [ "$major" -ge 11 ]; then
        unload="$root/usr/bin/kmutil unload -b $id"
        "$root/usr/bin/kmutil" unload -b "$id" >/dev/null 2>&1 || ok=0
    else
        unload="$root/sbin/kextunload -b $id"
        "$root/sbin/kextunload" -b "$id" >/dev/null 2>&1 || ok=0
    fi
    if [ "$ok" = 1 ]; then
        echo "prx preinstall: unloaded the old $name ($unload)"
    else
        echo "prx preinstall: the old $name was not unloaded (not loaded, or in use); the new version takes over after the restart"
    fi
done
exit 0
