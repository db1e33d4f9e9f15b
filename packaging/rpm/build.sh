#!/bin/bash
# build.sh: build the RPMs with real rpmbuild, in a private _topdir (nothing lands in ~/rpmbuild).
#
#   packaging/rpm/build.sh [OPTIONS] suite
#       handoff-VERSION-1.ARCH.rpm, handoff-rpm-macros-VERSION-1.noarch.rpm (+ -debuginfo/-debugsource
#       where rpm makes them) from handoff.spec; Source0 = the repository's files (tracked, and
#       untracked but not ignored) under handoff-VERSION/.
#   packaging/rpm/build.sh [OPTIONS] example-app [--version V] [--listen ADDR] [--app-dir DIR]
#       example-app-V-1.noarch.rpm from example-app.spec; Source0 = DIR (default examples/egg-app)
#       without node_modules/, logs/, run/; Source1 (--with bundled_modules) = its node_modules from
#       `npm ci --omit=dev` here, in a copy of DIR placed so that its file:../../packages/...
#       dependencies (egg-handoff, @handoff/worker) resolve to this repository's packages/.
#
# Options: --outdir DIR (default target/rpm), --vendor (suite: `cargo vendor` into Source1 and
# build offline), --cargo-target-dir DIR (suite: cargo's build directory, kept between builds),
# --rpmbuild-arg ARG (passed on, repeatable).
# Prints the paths of the built RPMs, one per line, on stdout; rpmbuild's log goes to stderr.
#
# Hosts whose rpm database does not know the build dependencies (Debian, where rpm is not the
# package manager) get --nodeps; on EL/Fedora the BuildRequires are checked as usual. The app
# package needs the %handoff_* macros at build time: installed (handoff-rpm-macros), or else
# packaging/rpm/macros.handoff is loaded from this tree.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)

outdir=$top/target/rpm vendor=no cargo_target='' app_version=1.0.0 listen='' app_dir=$top/examples/egg-app
extra=()
what=
while [ $# -gt 0 ]; do
  case $1 in
    --outdir) outdir=$2; shift 2 ;;
    --vendor) vendor=yes; shift ;;
    --cargo-target-dir) cargo_target=$2; shift 2 ;;
    --rpmbuild-arg) extra+=("$2"); shift 2 ;;
    --version) app_version=$2; shift 2 ;;
    --listen) listen=$2; shift 2 ;;
    --app-dir) app_dir=$2; shift 2 ;;
    suite|example-app) what=$1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 64 ;;
  esac
done
[ -n "$what" ] || { echo "build.sh: say what to build: suite or example-app (see --help)" >&2; exit 64; }
command -v rpmbuild >/dev/null || { echo "build.sh: rpmbuild not found (Debian: apt-get install rpm)" >&2; exit 69; }

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
tmp=$(mktemp -d /tmp/handoff-rpmbuild.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{SOURCES,BUILD,RPMS,SRPMS,SPECS}

args=(--define "_topdir $tmp" --define "_sourcedir $tmp/SOURCES" --define "_rpmdir $tmp/RPMS"
      --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm")
# rpm is not the system's package manager: its database cannot satisfy BuildRequires.
if ! rpm -q --quiet rpm 2>/dev/null; then args+=(--nodeps); fi

case $what in
suite)
  version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$top/Cargo.toml")
  [ -n "$version" ] || { echo "build.sh: no [workspace.package] version in Cargo.toml" >&2; exit 65; }
  src=$tmp/SOURCES/handoff-$version.tar.gz
  # The working tree's files as git sees them (committed or not, minus .gitignore'd ones).
  ( cd "$top" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
      tar --null -T - --transform "s,^,handoff-$version/," --owner=0 --group=0 --numeric-owner -czf "$src" )
  if [ $vendor = yes ]; then
    ( mkdir -p "$tmp/vendor-src" && cd "$tmp/vendor-src" && tar -xzf "$src" && cd "handoff-$version" &&
      cargo vendor --locked --quiet vendor >/dev/null &&
      tar --owner=0 --group=0 -czf "$tmp/SOURCES/handoff-$version-vendor.tar.gz" vendor )
    args+=(--with vendor)
  fi
  [ -n "$cargo_target" ] && args+=(--define "cargo_target_dir $(mkdir -p "$cargo_target" && cd "$cargo_target" && pwd)")
  args+=(--define "handoff_version $version")
  spec=$here/handoff.spec
  ;;
example-app)
  [ -f "$app_dir/package.json" ] || { echo "build.sh: no package.json in $app_dir" >&2; exit 66; }
  src=$tmp/SOURCES/example-app-$app_version.tar.gz
  ( cd "$app_dir" && tar --exclude=./node_modules --exclude=./logs --exclude=./run \
      --transform "s,^\./,example-app-$app_version/," --owner=0 --group=0 --numeric-owner -czf "$src" . )
  # node_modules, built here: the handoff packages are file: dependencies on this tree's packages/
  # (installed as copies, install-links in the app's .npmrc), which rpmbuild's build dir cannot see.
  stage=$tmp/stage/examples/app
  mkdir -p "$stage"
  ln -s "$top/packages" "$tmp/stage/packages"
  ( cd "$app_dir" && tar --exclude=./node_modules --exclude=./logs --exclude=./run -cf - . ) | tar -C "$stage" -xf -
  ( cd "$stage" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --prefer-offline >&2 &&
      rm -f node_modules/.package-lock.json &&
      tar --owner=0 --group=0 --numeric-owner -czf "$tmp/SOURCES/example-app-$app_version-node_modules.tar.gz" node_modules )
  args+=(--define "app_version $app_version" --with bundled_modules)
  [ -n "$listen" ] && args+=(--define "app_listen $listen")
  if ! rpm --eval '%{?handoff_post:yes}' | grep -q yes; then args+=(--load "$here/macros.handoff"); fi
  spec=$here/example-app.spec
  ;;
esac

echo "build.sh: rpmbuild -bb $(basename "$spec") ${args[*]} ${extra[*]}" >&2
rpmbuild -bb "${args[@]}" "${extra[@]}" "$spec" >&2
find "$tmp/RPMS" -name '*.rpm' -exec cp -t "$outdir" {} +
find "$tmp/RPMS" -name '*.rpm' -printf "$outdir/%f\n" | sort
