#!/bin/sh
# prx postinstall: packaging/scripts/postinstall.sh, with the placeholders filled
# in by `cargo xtask package`. Runs after the payload is laid down.
# $1: package path, $2: target location, $3: target volume (always / here).
#
# 1. Creates /Library/Application Support/prx/prx.toml from prx.toml.example
#    only when there is none, so an upgrade keeps the user's configuration.
# 2. Loads each kext: `kmutil load` on macOS 11 and later, `kextload` before.
#    Loading is refused until the user approves the kext (System Settings >
#    Privacy & Security) and restarts; that is normal and does not fail the
#    installation: the message says what to do.
# 3. Starts the boot-time daemons (launchctl bootstrap), in order:
#    net.prx.apply runs `prxctl apply --load`, now and at every boot;
#    net.prx.prxd runs prxd (/usr/local/libexec/prxd), kept alive. prxd sets
#    the kexts' proxies itself; if prx.toml has no [prxd] table (an upgrade
#    keeps the user's file) it exits at once and stays stopped: said here.
root="${3:-/}"
root="${root%/}"
labels="@LABELS@"
kexts="@KEXTS@"
conf="$root/Library/Application Support/prx"

for tool in /usr/bin/sw_vers /bin/launchctl; do
    if [ ! -x "$root$tool" ]; then
        echo "prx postinstall: $tool is missing; cannot finish the installation" >&2
        exit 1
    fi
done

if [ -e "$conf/prx.toml" ]; then
    echo "prx postinstall: keeping the existing $conf/prx.toml"
elif cp "$conf/prx.toml.example" "$conf/prx.toml" && chmod 0644 "$conf/prx.toml"; then
    echo "prx postinstall: created $conf/prx.toml from prx.toml.example"
else
    echo "prx postinstall: could not create $conf/prx.toml from prx.toml.example" >&2
    exit 1
fi

major=$("$root/usr/bin/sw_vers" -productVersion | cut -d. -f1)
case "$major" in
    ''|*[!0-9]*) major=10 ;;
esac

refused=""
for entry in $kexts; do
    name=${entry%%=*}
    path="$root/Library/Extensions/$name"
    [ -d "$path" ] || continue
    ok=1
    if [ "$major" -ge 11 ]; then
        "$root/usr/bin/kmutil" load -p "/Library/Extensions/$name" || ok=0
    else
        /usr/bin/touch "$root/Library/Extensions" 2>/dev/null
        "$root/sbin/kextload" "/Library/Extensions/$name" || ok=0
    fi
    if [ "$ok" = 1 ]; then
        echo "prx postinstall: loaded $name"
    else
        refused="$refused $name"
    fi
done
if [ -n "$refused" ]; then
    if [ "$major" -ge 11 ]; then
        echo "prx postinstall:$refused installed but not loaded yet: approve the system software from the developer in System Settings > Privacy & Security, then restart. On Apple silicon, first allow kernel extensions in Startup Security Utility (Reduced Security). The configuration is applied at the next boot."
    else
        echo "prx postinstall:$refused installed but not loaded yet: click Allow in System Preferences > Security & Privacy, then restart. The configuration is applied at the next boot."
    fi
fi

for label in $labels; do
    plist="/Library/LaunchDaemons/$label.plist"
    if "$root/bin/launchctl" bootstrap system "$plist"; then
        echo "prx postinstall: started $label"
    else
        echo "prx postinstall: $label did not start now; it starts at the next boot"
    fi
    if [ "$label" = net.prx.prxd ] && ! grep -q '^[[:space:]]*\[prxd\]' "$conf/prx.toml"; then
        echo "prx postinstall: $conf/prx.toml has no [prxd] table, so prxd stays stopped; to use it, copy the [prxd] table of prx.toml.example into prx.toml and run: sudo launchctl kickstart system/net.prx.prxd"
    fi
done
exit 0
