# syntax=docker/dockerfile:1
#
# Build: DOCKER_BUILDKIT=1 docker build -t vfi-orchestrator:dev .
# The cache mounts keep the cargo registry and target dir between builds, so a
# source-only change recompiles just this crate, not the dependency tree.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# The crate uses sqlx's runtime-checked queries, not query!/query_as!, so there
# is no `.sqlx/` offline data (why: README, Testing). SQLX_OFFLINE is a guard: a
# query macro added later fails this build instead of reaching for a database.
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never

# 1) Dependency download, keyed only on the manifests and lockfile. Cargo needs
#    every workspace member's manifest plus a target file to resolve, hence the
#    empty stubs (they are never compiled; step 2 overwrites them).
COPY Cargo.toml Cargo.lock ./
COPY kubesim/Cargo.toml kubesim/Cargo.toml
RUN mkdir -p src/bin/vfi kubesim/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/vfi/main.rs \
 && touch kubesim/src/lib.rs
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo fetch --locked

# 2) Real build. target/ is a cache mount (not part of the layer), so the
#    binary is copied out of it before the step ends.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p vfi-orchestrator --bins \
 && install -D -m 0755 target/release/vfi-orchestrator /out/vfi-orchestrator \
 && install -D -m 0755 target/release/vfi /out/vfi

# Runtime: glibc + libgcc + CA certs only, no shell, uid/gid 65532.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="vfi-orchestrator" \
      org.opencontainers.image.description="Runs batch tasks as Kubernetes Jobs from a REST API, with history in PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/vfi-orchestrator /usr/local/bin/vfi-orchestrator
# The command-line client too (README "CLI"): `kubectl exec ... -- vfi ls` or `docker run
# --entrypoint vfi ...`.
COPY --from=builder /out/vfi /usr/local/bin/vfi
USER 65532:65532
ENV LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/vfi-orchestrator"]
CMD ["serve"]
