# The container images (server-cpu, operator, and the pod sandbox's pause image),
# built locally with buildah on a stand-in base image: no Docker engine, no registry.
# Script and cache layout: hack/build-images.sh. Included by the top-level Makefile.

.PHONY: images images-deps

# Debian's buildah/podman stack, debootstrap for the base rootfs, and a C compiler
# with static glibc for the pause binary. Root is needed (apt, overlay mounts).
IMAGES_DEBS := buildah podman skopeo debootstrap runc uidmap fuse-overlayfs \
  golang-github-containers-common conmon gcc libc6-dev

images-deps:
	@missing=$$(for p in $(IMAGES_DEBS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "Installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

# Builds what changed (seconds when nothing did) and writes the manifest
# ~/.cache/kubeinfer/images/current.json that the local cluster imports from.
images: images-deps
	@hack/build-images.sh build
