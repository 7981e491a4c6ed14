# syntax=docker/dockerfile:1
# toolhost's image: the release binary, plus the guest runtimes fetched, verified, compiled and
# snapshotted at build time, so a container serves within a second of starting.
#
#   docker build -t toolhost .            # ~20 minutes on 2 cores; the warm stage needs ~2.5 GB of RAM
#   docker run --rm -p 8000:8000 -e TOOLHOST_TOKENS=<token> toolhost
#
# Tokens come from the environment at run time; none is baked in. See docs/deploy.md.

# The uid that builds the cache and runs the server. toolhost loads compiled native code only
# from files this user owns (0600 files in 0700 folders), so both must be the same uid.
ARG UID=10001

# --- build: the release binary ------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY host ./host
# The patched wasmtime crates Cargo.toml's [patch.crates-io] points at (vendor/README.md).
COPY vendor ./vendor
# include_str! embeds the runtime manifests and guest preludes in the binary.
COPY guest-runtimes ./guest-runtimes
# host/Cargo.toml names tests/all as a test target; it is not built here.
COPY tests/all ./tests/all
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin toolhost \
    && install -m 0755 target/release/toolhost /usr/local/bin/toolhost

# --- warm: fetch the runtimes with pip, verify, compile, snapshot --------------------------
# Same Debian release as the other stages (same glibc); this image brings python3 and pip,
# which `toolhost runtime fetch` runs as `python3 -m pip download`.
FROM python:3.12-slim-bookworm AS warm
ARG UID
ENV TOOLHOST_CACHE=/opt/toolhost/cache \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /usr/local/bin/toolhost /usr/local/bin/toolhost
RUN install -d -o "${UID}" -g "${UID}" -m 0700 /opt/toolhost/cache
USER ${UID}:${UID}
# Every runtime, compiled, and the default runtime's snapshot built. The run proves the cache
# serves: it fails the build unless the status is "ok".
RUN toolhost runtime fetch --compile \
    && toolhost run -c 'print(1 + 1)'

# --- runtime: slim, non-root; CA certificates its only package ------------------------------
FROM debian:bookworm-slim AS runtime
ARG UID
# CA certificates: with OAuth, toolhost reads the identity provider's metadata and keys over https.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid "${UID}" toolhost \
    && useradd --system --uid "${UID}" --gid "${UID}" --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin toolhost \
    && install -d -o "${UID}" -g "${UID}" -m 0700 /var/lib/toolhost/workspaces
COPY --from=build /usr/local/bin/toolhost /usr/local/bin/toolhost
COPY --from=warm --chown=${UID}:${UID} /opt/toolhost/cache /opt/toolhost/cache
# The example org tools; in Kubernetes a ConfigMap replaces them (deploy/kubernetes).
COPY tools /opt/toolhost/tools
ENV TOOLHOST_CACHE=/opt/toolhost/cache \
    TOOLHOST_WORKSPACES=/var/lib/toolhost/workspaces \
    TOOLHOST_TOOLS_DIR=/opt/toolhost/tools \
    TOOLHOST_LISTEN=0.0.0.0:8000 \
    TOOLHOST_LOG_FORMAT=json
WORKDIR /opt/toolhost
USER ${UID}:${UID}
VOLUME ["/var/lib/toolhost/workspaces"]
EXPOSE 8000
# No curl or wget in the slim image, and none is installed for this: bash (always in Debian)
# speaks one HTTP request to /healthz over /dev/tcp on the port TOOLHOST_LISTEN names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>\"/dev/tcp/127.0.0.1/${TOOLHOST_LISTEN##*:}\" && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 4 status <&3 && [[ $status == *' 200 '* ]]"]
ENTRYPOINT ["toolhost"]
CMD ["serve"]
