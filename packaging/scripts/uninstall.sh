#!/bin/sh
# prx uninstaller (installed as /usr/local/share/prx/uninstall.sh; generated
# from packaging/scripts/uninstall.sh by `cargo xtask package`).
#
#   sudo /usr/local/share/prx/uninstall.sh
#
# Stops the daemons (prxd first: it holds the kexts' controls open), unloads
# and removes the kexts, removes every file the
# package installed and forgets its receipt (pkgutil --forget). The
# configuration /Library/Application Support/prx/prx.toml is removed only if it
# is still the example's copy; an edited one is kept, and said so.
# --root DIR works on another root (the tests' fake root) instead of /.
set -u
root=/
while [ $# -gt 0 ]; do
    case "$1" in
        --root)
            [ $# -ge 2 ] || { echo "prx uninstall: --root needs a directory" >&2; exit 2; }
            root=$2
            shift 2
            ;;
        -h|--help)
            echo "usage: sudo $0 [--root DIR]"
            exit 0
            ;;
        *)
            echo "prx uninstall: unknown argument '$1' (usage: sudo $0)" >&2
            exit 2
            ;;
    esac
done
if [ "$root" = / ] && [ "$(id -u)" -ne 0 ]; then
    echo "prx uninstall: needs root: sudo $0" >&2
    exit 1
fi
root="${root%/}"
pkgid="@PKG_ID@"
labels="@STOP_LABELS@"
kexts="@KEXTS@"
files='@FILES@'
dirs='@DIRS@'
conf="$root/Library/Application Support/prx"
failed=""

major=$("$root/usr/bin/sw_vers" -productVersion 2>/dev/null | cut -d. -f1)
case "$major" in
    ''|*[!0-9]*) major=10 ;;
esac

for label in $labels; do
    if "$root/bin/launchctl" bootout "system/$label" 2>/dev/null; then
        echo "stopped $label"
    fi
done

for entry in $kexts; do
    name=${entry%%=*}
    id=${entry#*=}
    [ -d "$root/Library/Extensions/$name" ] || continue
    ok=1
    if [ "$major" -ge 11 ]; then
        "$root/usr/bin/kmutil" unload -b "$id" >/dev/null 2>&1 || ok=0
    else
        "$root/sbin/kextunload" -b "$id" >/dev/null 2>&1 || ok=0
    fi
    if [ "$ok" = 1 ]; then
        echo "unloaded $id"
    fi
    if rm -rf "$root/Library/Extensions/$name"; then
        echo "removed /Library/Extensions/$name"
    else
        failed="$failed /Library/Extensions/$name"
    fi
done

if [ -f "$conf/prx.toml" ]; then
    if cmp -s "$conf/prx.toml" "$conf/prx.toml.example"; then
        rm -f "$conf/prx.toml" && echo "removed /Library/Application Support/prx/prx.toml (unchanged example)"
    else
        echo "kept /Library/Application Support/prx/prx.toml: it has your changes; delete it by hand if you no longer need it"
    fi
fi

while IFS= read -r f; do
    [ -n "$f" ] || continue
    if [ -e "$root/$f" ] || [ -L "$root/$f" ]; then
        if rm -f "$root/$f"; then
            echo "removed /$f"
        else
            failed="$failed /$f"
        fi
    fi
done <<LIST
$files
LIST

while IFS= read -r d; do
    [ -n "$d" ] || continue
    [ -d "$root/$d" ] || continue
    if rmdir "$root/$d" 2>/dev/null; then
        echo "removed /$d"
    else
        case "$d" in
            */prx) echo "kept /$d: it holds files prx did not install" ;;
        esac
    fi
done <<LIST
$dirs
LIST

if "$root/usr/sbin/pkgutil" --volume "${root:-/}" --forget "$pkgid" >/dev/null 2>&1; then
    echo "forgot the receipt $pkgid"
else
    echo "no receipt $pkgid to forget"
fi

if [ -n "$failed" ]; then
    echo "prx uninstall: could not remove:$failed" >&2
    exit 1
fi
echo "prx is uninstalled. Restart to take the kexts out of the running system for good."
exit 0
