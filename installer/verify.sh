#!/usr/bin/env bash
# Bootstrap check of an appliance bundle with system tools only (bash, gpgv, sha256sum,
# coreutils), the way Ubuntu ISOs are checked: no code from the bundle runs before it passes.
#
#   installer/verify.sh BUNDLE_DIR KEYRING [THRESHOLD]
#
# 1. gpgv checks every signatures/*.asc over SHA256SUMS against KEYRING (a binary keyring:
#    `gpg --export KEYS > keyring.gpg`); distinct primary-key fingerprints with a good
#    signature (gpgv --status-fd: GOODSIG + VALIDSIG, no BADSIG/ERRSIG/EXPKEYSIG/REVKEYSIG)
#    must reach THRESHOLD (default 1).
# 2. No symlinks or special files anywhere in the bundle; every SHA256SUMS path is relative
#    with no '..'; the files on disk are exactly those listed (plus SHA256SUMS, signatures/).
# 3. `sha256sum --strict -c SHA256SUMS` from inside the bundle.
# Then run `appliance verify` for the full check (lock, wheelhouse, SBOM, policy).
set -euo pipefail
export LC_ALL=C

die() { echo "verify.sh: FAIL: $*" >&2; exit 1; }
if [ $# -lt 2 ] || [ $# -gt 3 ]; then echo "usage: $0 BUNDLE_DIR KEYRING [THRESHOLD]" >&2; exit 2; fi
bundle=$1 keyring=$2 threshold=${3:-1}
case $threshold in ''|*[!0-9]*) echo "verify.sh: THRESHOLD must be a positive integer" >&2; exit 2;; esac
[ "$threshold" -ge 1 ] || { echo "verify.sh: THRESHOLD must be at least 1" >&2; exit 2; }
if [ ! -d "$bundle" ] || [ -L "$bundle" ]; then echo "verify.sh: $bundle: not a bundle directory" >&2; exit 2; fi
[ -f "$keyring" ] || { echo "verify.sh: $keyring: keyring not found" >&2; exit 2; }
for tool in gpgv sha256sum find sort comm; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
keyring=$(cd "$(dirname "$keyring")" && pwd)/$(basename "$keyring")
cd "$bundle"

if [ ! -f SHA256SUMS ] || [ -L SHA256SUMS ]; then die "SHA256SUMS: missing (the signed index)"; fi

# 1. Signatures.
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
declare -A signers=()
shopt -s nullglob
for sig in signatures/*.asc; do
  if [ ! -f "$sig" ] || [ -L "$sig" ]; then die "$sig: not a regular file"; fi
  status=$(gpgv --homedir "$home" --keyring "$keyring" --status-fd 1 "$sig" SHA256SUMS 2>/dev/null) && rc=0 || rc=$?
  if [ "$rc" -ne 0 ] || grep -qE '^\[GNUPG:\] (BADSIG|ERRSIG|EXPSIG|EXPKEYSIG|REVKEYSIG|NO_PUBKEY) ' <<<"$status"; then
    reason=$(grep -oE '^\[GNUPG:\] (BADSIG|ERRSIG|EXPSIG|EXPKEYSIG|REVKEYSIG|NO_PUBKEY) [0-9A-F]+' <<<"$status" | head -n1 | cut -d' ' -f2-)
    echo "verify.sh: $sig: not counted: ${reason:-gpgv failed}" >&2
    continue
  fi
  grep -q '^\[GNUPG:\] GOODSIG ' <<<"$status" || { echo "verify.sh: $sig: not counted: no GOODSIG" >&2; continue; }
  while read -r _ _ fpr _ _ _ _ _ _ hash class primary _; do
    case $hash in 1|2|3) echo "verify.sh: $sig: not counted: weak hash algorithm $hash" >&2; continue;; esac
    [ "$class" = 00 ] || { echo "verify.sh: $sig: not counted: signature class $class" >&2; continue; }
    signers[${primary:-$fpr}]=1
  done < <(grep '^\[GNUPG:\] VALIDSIG ' <<<"$status")
done
count=${#signers[@]}
[ "$count" -ge "$threshold" ] || die "SHA256SUMS: $count valid signature(s) from known keys, threshold is $threshold"
echo "verify.sh: signatures: $count valid of threshold $threshold: ${!signers[*]}"

# 2. Layout: no links or special files; SHA256SUMS paths safe; exact file set.
links=$(find . \( -type l -o ! -type f ! -type d \) -printf '%P\n' | sort)
[ -z "$links" ] || die "symbolic link or special file refused: $(tr '\n' ' ' <<<"$links")"
while IFS= read -r line; do
  [[ $line =~ ^[0-9a-f]{64}\ [\ *](.+)$ ]] || die "SHA256SUMS: malformed line: $line"
  path=${BASH_REMATCH[1]}
  case "/$path/" in
    //*|*/../*|*/./*|*//*) die "SHA256SUMS: unsafe path: $path";;
  esac
done < SHA256SUMS
listed=$(sed -E 's/^[0-9a-f]{64} [ *]//' SHA256SUMS | sort)
present=$(find . -type f ! -path ./SHA256SUMS ! -path './signatures/*' -printf '%P\n' | sort)
extra=$(comm -13 <(echo "$listed") <(echo "$present"))
missing=$(comm -23 <(echo "$listed") <(echo "$present"))
[ -z "$extra" ] || die "unexpected file (not in SHA256SUMS): $(tr '\n' ' ' <<<"$extra")"
[ -z "$missing" ] || die "missing file (listed in SHA256SUMS): $(tr '\n' ' ' <<<"$missing")"

# 3. Hashes.
if ! out=$(sha256sum --strict --quiet -c SHA256SUMS 2>&1); then
  die "sha256 mismatch: $(grep -v '^sha256sum: WARNING' <<<"$out" | tr '\n' ' ')"
fi
echo "verify.sh: OK: $(wc -l < SHA256SUMS) files match SHA256SUMS; next: appliance verify"
