# syntax=docker/dockerfile:1
# One image for every role: `ambit control`, `ambit-node` (the node proxy alone: a node maps a
# fraction of the code), `ambit cni` (deploy/charts choose the command). Build from the repository root:  docker build -t <hub>/ambit:<tag> .

# --- build: the toolchain pinned by rust-toolchain.toml; gcc and make build aws-lc ------------
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ambit \
    && install -D -m 0755 target/release/ambit /out/ambit \
    && install -D -m 0755 target/release/ambit-node /out/ambit-node

# --- runtime: glibc, CA certificates, and nftables/iptables for the capture agent's pod rules --
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates nftables iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ambit /out/ambit-node /usr/local/bin/
# Non-root by default; the charts run the node proxy and the capture agent as root, because they
# enter pod network namespaces and write host CNI folders.
USER 65532:65532
EXPOSE 15001 15006 15008 15010 15012 15014 15020 15021
ENTRYPOINT ["/usr/local/bin/ambit"]
