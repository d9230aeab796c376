#!/bin/sh
# import-NAME.sh, written by `cargo xtask cache-pack` beside the pack NAME.
# Imports a packed Docker build-cache bundle (written by `cargo xtask cache-pack`) on a
# server with Docker and sh, and no xtask: checks every part against the index, unpacks
# the bundle into a new folder (only regular files that its SHA256SUMS lists), checks
# every file, then runs the bundle's own import-build-cache.sh from that folder.
#
#   sh import-NAME.sh --pack NAME.pack-index [--bundle DIR] [sha256:DIGEST] [ARGS...]
#   sh import-NAME.sh --pack NAME.tar [--bundle DIR] [sha256:DIGEST] [ARGS...]
#
#   --pack FILE     the index of the parts (they lie beside it), or the one tar
#   --bundle DIR    where the bundle goes; must not exist (default: ./NAME, NAME the pack's)
#   sha256:DIGEST   the bundle digest published with the release (bundle-digest.txt); given,
#                   any other bundle is refused before a part is read
#   ARGS            for the bundle's import-build-cache.sh: --patch-compose FILE, --no-tool
#
# The parts stay where they are (a USB disk, a download folder); the bundle folder is the
# one copy on disk. They are read three times: checked, listed, unpacked. Nothing is
# written unless every part checks, and DIR appears only when every file has.
set -eu

usage="usage: sh ${0##*/} --pack NAME.pack-index|NAME.tar [--bundle DIR] [sha256:DIGEST] [--patch-compose FILE] [--no-tool]"
die() {
    echo "error: $1" >&2
    exit 1
}

pack=
dest=
want=
n=$#
while [ "$n" -gt 0 ]; do
    arg=$1
    shift
    n=$((n - 1))
    case $arg in
        --pack | --bundle | --patch-compose)
            if [ "$n" -eq 0 ]; then
                echo "error: $arg needs a value; $usage" >&2
                exit 2
            fi
            case $arg in
                --pack) pack=$1 ;;
                --bundle) dest=$1 ;;
                *) set -- "$@" "$arg" "$1" ;;
            esac
            shift
            n=$((n - 1))
            ;;
        --pack=*) pack=${arg#--pack=} ;;
        --bundle=*) dest=${arg#--bundle=} ;;
        sha256:*) want=${arg#sha256:} ;;
        -h | --help)
            sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) set -- "$@" "$arg" ;;
    esac
done
if [ -z "$pack" ]; then
    echo "error: give the pack to import: $usage (the bundle's own import-build-cache.sh is inside the pack; this script unpacks it)" >&2
    exit 2
fi
case $want in
    '') ;;
    *[!0-9a-f]*) die "sha256:$want is not a bundle digest (64 lower-case hex digits after sha256:)" ;;
    *) [ ${#want} -eq 64 ] || die "sha256:$want is not a bundle digest (64 lower-case hex digits after sha256:)" ;;
esac
if [ -h "$pack" ] || [ ! -f "$pack" ]; then
    die "$pack is not a regular file; give --pack the NAME.pack-index or NAME.tar that cache-pack wrote"
fi
packdir=$(cd "$(dirname "$pack")" && pwd)
packfile=${pack##*/}

tree=$(mktemp -d "${TMPDIR:-/var/tmp}/import-pack.XXXXXX")
unpacking=
trap 'rm -rf "$tree" ${unpacking:+"$unpacking"}' EXIT
chmod 700 "$tree"

# The parts, in order: NAME SIZE SHA256 per line (one line with no size for a tar).
case $packfile in
    *.pack-index)
        if [ "$(wc -c < "$pack")" -gt 1048576 ]; then
            die "$pack is larger than an index can be (1 MiB); it is not one cache-pack wrote"
        fi
        if ! awk -v index_file="$pack" '
            function bad(why) { print "error: " index_file ": line " NR ": " why | "cat 1>&2"; failed = 1; exit 1 }
            function hex64(s) { return length(s) == 64 && s ~ /^[0-9a-f]+$/ }
            function number(s) { return s ~ /^[1-9][0-9]*$/ }
            /^#/ || /^[ \t]*$/ { next }
            { n++ }
            n == 1 { if ($0 != "xtask-pack-index: 1") bad("expected `xtask-pack-index: 1` (another format: use the xtask that packed it)"); next }
            n == 2 { if ($0 !~ /^name: [A-Za-z0-9][A-Za-z0-9._-]*$/) bad("expected `name: NAME`"); name = substr($0, 7); next }
            n == 3 { if ($1 != "bundle-digest:" || NF != 2 || !hex64($2)) bad("expected `bundle-digest: SHA256`"); print "digest " $2; next }
            n == 4 { if ($1 != "part-size:" || NF != 2 || !number($2)) bad("expected `part-size: BYTES`"); part_size = $2; next }
            n == 5 { if ($1 != "total-size:" || NF != 2 || !number($2)) bad("expected `total-size: BYTES`"); total = $2; next }
            {
                parts++
                want_name = sprintf("%s.tar.part-%03d", name, parts)
                if ($1 != "part:" || NF != 4 || $2 != want_name || !number($3) || !hex64($4)) bad("expected `part: " want_name " SIZE SHA256`")
                if (last_size != "" && last_size != part_size) bad("a part before the last is not part-size bytes")
                if ($3 + 0 > part_size + 0) bad($2 " is larger than part-size")
                last_size = $3
                sum += $3
                print "part " $2 " " $3 " " $4
            }
            END {
                if (failed) exit 1
                if (n < 5 || parts == 0) { print "error: " index_file " ends before its parts" | "cat 1>&2"; exit 1 }
                if (sum != total + 0) { print "error: " index_file ": the parts add up to " sum " bytes, total-size says " total | "cat 1>&2"; exit 1 }
                print "name " name
            }' "$pack" > "$tree/index"; then
            die "$pack is not an index cache-pack wrote (see above); nothing was read"
        fi
        name=$(sed -n 's/^name //p' "$tree/index")
        digest=$(sed -n 's/^digest //p' "$tree/index")
        sed -n 's/^part //p' "$tree/index" > "$tree/parts"
        if [ -n "$want" ] && [ "$digest" != "$want" ]; then
            die "the index names bundle sha256:$digest, not sha256:$want: this is not the bundle that was published; nothing was read"
        fi
        # Every part present with its size, and no other part of that name, before a byte is read.
        while read -r part size sum; do
            if [ ! -e "$packdir/$part" ] && [ ! -h "$packdir/$part" ]; then
                die "$part is missing (the index names it); download or copy it beside $packfile"
            fi
            if [ -h "$packdir/$part" ] || [ ! -f "$packdir/$part" ]; then
                die "$part is not a regular file; copy the part itself beside $packfile"
            fi
            have=$(wc -c < "$packdir/$part" | tr -d ' ')
            if [ "$have" != "$size" ]; then
                die "$part is $have bytes, the index says $size (truncated, or another pack's part); copy it again"
            fi
        done < "$tree/parts"
        for file in "$packdir/$name".tar.part-*; do
            [ -e "$file" ] || [ -h "$file" ] || continue
            if ! awk -v part="${file##*/}" '$1 == part { found = 1 } END { exit !found }' "$tree/parts"; then
                die "${file##*/} is beside $packfile but the index does not name it (a part of another pack?); move it away"
            fi
        done
        echo "Checking $(wc -l < "$tree/parts" | tr -d ' ') parts against $packfile..."
        while read -r part size sum; do
            got=$(sha256sum < "$packdir/$part" | cut -d ' ' -f 1)
            if [ "$got" != "$sum" ]; then
                other=$(awk -v h="$got" '$1 == "part" && $4 == h { print $2; exit }' "$tree/index")
                if [ -n "$other" ]; then
                    die "$part holds the bytes of $other: the parts are reordered or renamed; nothing was unpacked"
                fi
                die "$part is damaged (sha256 $got, the index says $sum); copy it again; nothing was unpacked"
            fi
        done < "$tree/parts"
        ;;
    *.tar)
        name=${packfile%.tar}
        digest=
        printf '%s\n' "$packfile" > "$tree/parts"
        ;;
    *)
        echo "error: --pack takes NAME.pack-index or NAME.tar, not $pack; $usage" >&2
        exit 2
        ;;
esac

stream() {
    while read -r part _; do
        cat "$packdir/$part"
    done < "$tree/parts"
}

# The first entry is SHA256SUMS; its sha256 is the bundle digest, checked before the rest.
first=$(stream | head -c 100 | tr -d '\000')
octal=$(stream | head -c 136 | tail -c 12 | tr -d '\000 ')
case $octal in
    '' | *[!0-7]*) die "$packfile does not start with a tar header; it is not a pack cache-pack wrote" ;;
esac
sums_size=$((0$octal))
if [ "$first" != SHA256SUMS ] || [ "$sums_size" -gt 8388608 ]; then
    die "$packfile does not start with SHA256SUMS (of at most 8 MiB); it is not a pack cache-pack wrote"
fi
got=$(stream | tail -c +513 | head -c "$sums_size" | sha256sum | cut -d ' ' -f 1)
if [ -n "$digest" ] && [ "$got" != "$digest" ]; then
    die "the pack's SHA256SUMS has sha256 $got, the index says $digest; nothing was unpacked"
fi
if [ -n "$want" ] && [ "$got" != "$want" ]; then
    die "the bundle digest is sha256:$got, not sha256:$want: this is not the bundle that was published; nothing was unpacked"
fi
digest=$got

# Every entry a regular file of mode 644 or 755, under a plain relative name, once each:
# no link, device, folder, absolute path or `..` is unpacked.
mkfifo "$tree/listed.fifo"
sha256sum < "$tree/listed.fifo" > "$tree/listed.sum" &
stream | tee "$tree/listed.fifo" | tar -tvf - > "$tree/listing" || die "$packfile is not a whole tar; nothing was unpacked"
wait
if ! awk '
    function bad(why) { print "error: entry " NR " of the pack: " why "; nothing was unpacked" | "cat 1>&2"; failed = 1; exit 1 }
    {
        type = $1
        line = $0
        for (i = 0; i < 5; i++) sub(/^[^ ]+ +/, "", line)
        if (type != "-rw-r--r--" && type != "-rwxr-xr-x") bad(line " is not a regular file of mode 644 or 755 (" type ")")
        if (line !~ /^[A-Za-z0-9._+@=,:~%\/-]+$/) bad("the name " line " has characters a bundle file does not have")
        parts = split(line, seg, "/")
        for (i = 1; i <= parts; i++) if (seg[i] == "" || seg[i] == "." || seg[i] == "..") bad("the name " line " is not a plain relative path")
        if (NR == 1 && line != "SHA256SUMS") bad("the first entry is " line ", not SHA256SUMS")
        if (NR == 2 && line != "manifest.yaml") bad("the second entry is " line ", not manifest.yaml")
        if (line in seen) bad(line " comes twice")
        seen[line] = 1
        print line
    }
    END { if (failed) exit 1 }' "$tree/listing" > "$tree/names"; then
    die "$packfile holds an entry a bundle does not (see above)"
fi

if [ -z "$dest" ]; then
    dest=$name
fi
case $dest in
    /*) ;;
    *) dest="$(pwd)/$dest" ;;
esac
if [ -e "$dest" ] || [ -h "$dest" ]; then
    die "$dest already exists; give --bundle a folder that does not exist yet (nothing is overwritten)"
fi
mkdir -p "$(dirname "$dest")"
unpacking=$(mktemp -d "$dest.unpacking.XXXXXX")
echo "Unpacking $(wc -l < "$tree/names" | tr -d ' ') files into $dest..."
mkfifo "$tree/unpacked.fifo"
sha256sum < "$tree/unpacked.fifo" > "$tree/unpacked.sum" &
stream | tee "$tree/unpacked.fifo" | (cd "$unpacking" && tar -xf -) || die "unpacking $packfile failed (see above); nothing was kept"
wait
if ! cmp -s "$tree/listed.sum" "$tree/unpacked.sum"; then
    die "$packfile changed while it was read (the bytes unpacked are not those listed); nothing was kept"
fi
if [ "$(sha256sum < "$unpacking/SHA256SUMS" | cut -d ' ' -f 1)" != "$digest" ]; then
    die "SHA256SUMS changed while the pack was read; nothing was kept"
fi
# Exactly the files SHA256SUMS lists, and each with its sha256.
sed -n 's/^[0-9a-f]\{64\}  //p' "$unpacking/SHA256SUMS" | sort > "$tree/listed-in-sums"
grep -vx SHA256SUMS "$tree/names" | sort > "$tree/unpacked-names"
if ! cmp -s "$tree/listed-in-sums" "$tree/unpacked-names"; then
    echo "error: the pack's files are not those its SHA256SUMS lists; nothing was kept:" >&2
    diff "$tree/listed-in-sums" "$tree/unpacked-names" | sed -n 's/^< /  missing: /p; s/^> /  not listed: /p' >&2
    exit 1
fi
echo "Verifying checksums (SHA256SUMS)..."
if ! (cd "$unpacking" && sha256sum -c --quiet SHA256SUMS); then
    die "the pack's files are damaged (named above); nothing was kept. Copy the pack again"
fi
mv "$unpacking" "$dest"
unpacking=
echo "Unpacked bundle sha256:$digest into $dest"

# The bundle's own script, checked against SHA256SUMS before it runs.
script_sum=$(awk '$2 == "import-build-cache.sh" { print $1 }' "$dest/SHA256SUMS")
if [ -z "$script_sum" ] || [ "$(sha256sum < "$dest/import-build-cache.sh" | cut -d ' ' -f 1)" != "$script_sum" ]; then
    die "the bundle in $dest has no checked import-build-cache.sh"
fi
sh "$dest/import-build-cache.sh" "$@" "sha256:$digest"
