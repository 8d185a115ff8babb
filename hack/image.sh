#!/usr/bin/env bash
# Builds the Frontier container image (Containerfile) here, with buildah and no registry:
#   1. installs buildah and debootstrap with apt-get when missing (root only);
#   2. makes the base image from Debian packages, since no registry is reachable: `debootstrap --variant=minbase
#      bookworm` with python3, python3-venv and ca-certificates, trimmed (docs, man pages, locales, apt lists,
#      glibc's gconv) and tarred into $FRONTIER_CACHE/image/ (made once: later runs reuse the tarball), then
#      imported with `buildah from scratch` + `buildah add` + `buildah commit` as the local image
#      localhost/frontier-base:bookworm-python3 (seconds, when missing from buildah's storage);
#   3. `buildah bud --isolation chroot --network host --layers --build-arg BASE=$BASE_IMAGE` -> the tag
#      ghcr.io/frontier-dev/frontier:<version in pyproject.toml>, labelled with the source tree hash.
#
# Usage: bash hack/image.sh build            build, unless the tagged image is already up to date
#        bash hack/image.sh archive [PATH]   build, then write an OCI archive (default out/frontier-image.tar)
#        bash hack/image.sh tag              print the tag
#        bash hack/image.sh source-hash      print the source tree hash the image is labelled with
#        bash hack/image.sh fresh            exit 0 when the tagged image carries the current hash and base
# FRONTIER_IMAGE_REBUILD=1 builds even when the image is up to date. Behind a TLS-intercepting proxy, pip in the
# build trusts the CA bundle pip trusts here ($FRONTIER_IMAGE_CA, else $PIP_CERT, $REQUESTS_CA_BUNDLE or
# $SSL_CERT_FILE), mounted for the build's RUN steps only: it never lands in the image.
#
# Up to date means: the tagged image's labels `dev.frontier.source-tree` and `dev.frontier.base` equal the git
# tree hash of the build inputs in the working tree (the paths .dockerignore lets in: tracked and untracked,
# uncommitted edits included, through a throwaway index: `git add -A` + `git write-tree`, well under a second)
# and the base image's ID. Content, not timestamps or commits: a checkout, a commit or a touch rebuilds
# nothing, an edit to any file the wheel is built from rebuilds. PyPI is not pinned: dependencies are
# resolved again only when the image is rebuilt.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cache=${FRONTIER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/frontier}/image
python=${PYTHON:-python3}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv,ca-certificates
base_image=localhost/frontier-base:$suite-python3
rootfs_tar=$cache/debian-$suite-python3-rootfs.tar
registry=ghcr.io/frontier-dev/frontier
# What the base is made of: a change here remakes the cached root filesystem and the base image.
recipe="debootstrap --variant=minbase --include=$packages $suite; without apt lists, docs, man, locales, gconv"

log() { echo "==> image: $*"; }
die() {
	echo "==> image: error: $*" >&2
	exit 1
}

version() { "$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])'; }
tag() { echo "$registry:$(version)"; }

# The .dockerignore whitelist as git pathspecs: `!path` lines are included, other lines (but `*`) excluded.
pathspecs() {
	local line
	while IFS= read -r line; do
		line=${line%%#*}
		line=${line%"${line##*[![:space:]]}"}
		case "$line" in
		'' | '*') ;;
		'!'*) echo "${line#!}" ;;
		*) echo ":(exclude,glob)$line" ;;
		esac
	done <.dockerignore
	echo Containerfile
	echo .dockerignore
}

source_hash() {
	git rev-parse --git-dir >/dev/null 2>&1 || {
		echo unknown
		return
	}
	local scratch specs
	scratch=$(mktemp -d)
	mapfile -t specs < <(pathspecs)
	GIT_INDEX_FILE=$scratch/index git add -A -- "${specs[@]}"
	GIT_INDEX_FILE=$scratch/index git write-tree
	rm -rf "$scratch"
}

label() { # label IMAGE KEY: the label's value, empty when the image or the label is missing
	buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }

rootfs_cached() { [[ -f "$rootfs_tar" && "$(cat "$rootfs_tar.stamp" 2>/dev/null)" == "$recipe" ]]; }

ensure_tools() {
	local missing=()
	command -v buildah >/dev/null || missing+=(buildah)
	command -v debootstrap >/dev/null || rootfs_cached || missing+=(debootstrap)
	((${#missing[@]} == 0)) && return
	[[ $(id -u) == 0 ]] || die "${missing[*]} missing; install them (apt-get install ${missing[*]}) or run as root"
	log "installing ${missing[*]} (apt-get)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

make_rootfs() {
	[[ $(id -u) == 0 ]] || die "debootstrap needs root"
	local dir=$cache/rootfs.tmp start=$SECONDS
	rm -rf "$dir" "$rootfs_tar.tmp"
	mkdir -p "$dir"
	log "debootstrap --variant=minbase --include=$packages $suite (once; cached in $rootfs_tar)"
	debootstrap --variant=minbase --include="$packages" "$suite" "$dir" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
		die "debootstrap failed; see $cache/debootstrap.log"
	! grep -q " $dir/" /proc/mounts || die "something is still mounted under $dir; unmount it first"
	log "trimming the root filesystem (apt caches and lists, docs, man pages, locales, glibc's gconv)"
	# gconv: glibc's iconv() charset modules (8 MB); Python's codecs do not use them, and UTF-8, ASCII and
	# Latin-1 are built into glibc.
	rm -rf "${dir:?}"/var/cache/apt/archives/*.deb "${dir:?}"/var/cache/apt/*.bin "${dir:?}"/var/lib/apt/lists/* \
		"${dir:?}"/var/log/* "${dir:?}"/usr/share/doc/* "${dir:?}"/usr/share/man/* "${dir:?}"/usr/share/info/* \
		"${dir:?}"/usr/share/locale/* "${dir:?}"/usr/lib/*/gconv "${dir:?}"/tmp/* "${dir:?}"/dev/* "${dir:?}"/proc/* \
		"${dir:?}"/sys/* "${dir:?}"/run/*
	: >"$dir/etc/resolv.conf"
	echo frontier >"$dir/etc/hostname"
	# What later `apt-get install`s in a derived image keep out, as Debian's own slim images do.
	cat >"$dir/etc/dpkg/dpkg.cfg.d/01-frontier-slim" <<-'EOF'
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/man/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/locale/*
	EOF
	chroot "$dir" python3 -c 'import ensurepip, ssl, venv' || die "python3 or its venv module missing from the root filesystem"
	log "packing $rootfs_tar"
	tar --numeric-owner --xattrs -C "$dir" -cf "$rootfs_tar.tmp" .
	mv "$rootfs_tar.tmp" "$rootfs_tar"
	echo "$recipe" >"$rootfs_tar.stamp"
	rm -rf "$dir"
	log "root filesystem made in $((SECONDS - start))s ($(du -h "$rootfs_tar" | cut -f1))"
}

ensure_base() {
	if [[ "$(label "$base_image" dev.frontier.recipe)" == "$recipe" ]]; then
		log "base $base_image present"
		return
	fi
	mkdir -p "$cache"
	if rootfs_cached; then
		log "base root filesystem cached: $rootfs_tar"
	else
		make_rootfs
	fi
	log "importing the root filesystem as $base_image"
	local ctr
	ctr=$(buildah from scratch)
	buildah add --quiet "$ctr" "$rootfs_tar" / >/dev/null
	buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
		--cmd /bin/bash --label "dev.frontier.recipe=$recipe" "$ctr"
	buildah commit --quiet --rm "$ctr" "$base_image" >/dev/null
	log "base $base_image committed"
}

fresh() { # fresh TAG HASH: the image carries HASH and the current base's ID
	local base_id
	base_id=$(image_id "$base_image")
	[[ -n "$base_id" && "$2" != unknown && "$(label "$1" dev.frontier.source-tree)" == "$2" &&
		"$(label "$1" dev.frontier.base)" == "$base_id" ]]
}

build() {
	local tag hash start=$SECONDS
	tag=$(tag)
	ensure_tools
	[[ $(id -u) == 0 ]] || log "warning: not root; buildah needs a rootless setup (subuids) to work"
	ensure_base
	hash=$(source_hash)
	log "source tree $hash"
	if [[ -z ${FRONTIER_IMAGE_REBUILD:-} ]] && fresh "$tag" "$hash"; then
		log "$tag is up to date (same source tree and base); FRONTIER_IMAGE_REBUILD=1 rebuilds"
		return
	fi
	local previous
	previous=$(image_id "$tag")
	# pip in the build trusts what pip here trusts (a TLS-intercepting proxy's CA), through a build-time mount.
	local ca=${FRONTIER_IMAGE_CA:-${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}} ca_args=()
	if [[ -n "$ca" && -f "$ca" ]]; then
		ca_args=(--volume "$(realpath "$ca"):/run/frontier-build-ca.crt:ro" --build-arg PIP_CERT=/run/frontier-build-ca.crt)
		log "pip in the build trusts $ca"
	fi
	log "buildah bud -> $tag"
	buildah bud --isolation chroot --network host --layers "${ca_args[@]}" \
		--build-arg "BASE=$base_image" \
		--label "dev.frontier.source-tree=$hash" \
		--label "dev.frontier.base=$(image_id "$base_image")" \
		--label "org.opencontainers.image.version=$(version)" \
		-f Containerfile -t "$tag" .
	if [[ -n "$previous" && "$previous" != "$(image_id "$tag")" ]]; then
		buildah rmi "$previous" >/dev/null 2>&1 || true # the replaced build, untagged now
	fi
	log "$tag built in $((SECONDS - start))s, $(buildah images --format '{{.Size}}' "$tag")"
}

archive() {
	local path=${1:-out/frontier-image.tar} tag
	tag=$(tag)
	build
	mkdir -p "$(dirname "$path")"
	rm -f "$path"
	log "buildah push $tag oci-archive:$path"
	buildah push --quiet "$tag" "oci-archive:$path:$tag"
	log "wrote $path ($(du -h "$path" | cut -f1)); load it with: kind load image-archive $path"
}

case "${1:-build}" in
build) build ;;
archive) archive "${2:-}" ;;
tag) tag ;;
source-hash) source_hash ;;
fresh) fresh "$(tag)" "$(source_hash)" ;;
*) die "unknown command ${1}; expected build, archive, tag, source-hash or fresh" ;;
esac
