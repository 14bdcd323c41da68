#!/usr/bin/env bash
# Builds the Heimdall packages: heimdall-agent and heimdall-aggregator (with the
# `heimdall` CLI), as .deb (cargo-deb) and .rpm (cargo-generate-rpm), into
# target/packages/ (or --out).
#
#   packaging/build-packages.sh                  release build, then package
#   packaging/build-packages.sh --profile dev    package the debug build (tests)
#
# Needs: cargo install --locked cargo-deb cargo-generate-rpm; gzip and objcopy
# (binutils).
# Options:
#   --profile P       cargo profile to build and package (default: release)
#   --out DIR         where the packages go (default: target/packages)
#   --version V       package version (default: the workspace version); Debian's
#                     revision is -1, RPM's release 1
#   --no-build        package what target/<profile>/ holds already
#   --fast            quicker, larger compression (for tests)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
out=target/packages
version=
build=1
fast=
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --version) version=$2; shift 2 ;;
        --no-build) build=; shift ;;
        --fast) fast=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-packages.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
done
for tool in cargo-deb cargo-generate-rpm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build-packages.sh: $tool is missing: cargo install --locked $tool" >&2
        exit 1
    fi
done
case "$profile" in dev|debug) dir=debug ;; *) dir=$profile ;; esac
target=${CARGO_TARGET_DIR:-target}
bin=$target/$dir

if [ -n "$build" ]; then
    cargo build --locked --profile "$profile" -p heimdall-agent -p heimdall-aggregator -p heimdall-cli --bins
fi
for b in heimdall-agent heimdall-aggregator heimdall; do
    [ -x "$bin/$b" ] || { echo "build-packages.sh: $bin/$b is missing (build first)" >&2; exit 1; }
done

# The binaries without debug information (symbols stay, so backtraces name
# functions); man pages and shell completions generated from each program's clap
# definition.
stage=$bin/packaging
rm -rf "$stage"
mkdir -p "$stage/bin"
for b in heimdall-agent heimdall-aggregator heimdall; do
    objcopy --strip-debug "$bin/$b" "$stage/bin/$b"
done
for b in heimdall-agent heimdall-aggregator heimdall; do
    "$bin/$b" generate-docs --out "$stage/$b" >/dev/null
    gzip -9n "$stage/$b"/man/*.1
done

mkdir -p "$out"
deb_args=(--no-build --profile "$profile" --output "$out" --quiet)
rpm_args=(--profile "$profile" --output "$out")
if [ -n "$version" ]; then
    deb_args+=(--deb-version "$version-1")
    rpm_args+=(--set-metadata "version = \"$version\"")
fi
if [ -n "$fast" ]; then
    deb_args+=(--fast)
    rpm_args+=(--payload-compress gzip)
fi
for p in heimdall-agent heimdall-aggregator; do
    cargo deb -p "$p" "${deb_args[@]}"
    cargo generate-rpm -p "${p#heimdall-}" "${rpm_args[@]}"
done
ls -l "$out"
