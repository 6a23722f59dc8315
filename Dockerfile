# The herd image: one binary; the command picks the plane (`herd brain`, `herd hands`, …).
#
#   docker build -t herd:latest .
#
# Built from source in a Rust image, run on Debian slim with CA certificates (model APIs are
# HTTPS). Without a registry, use deploy/build-images, which puts a binary built on this
# machine into a locally built base (deploy/Dockerfile.prebuilt).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY streams ./streams
RUN cargo build --release --locked --bin herd && cp target/release/herd /herd

FROM ${RUNTIME_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /herd /usr/local/bin/herd
# Brains run as nobody (compose.yaml); hands need the Docker socket, so compose runs them as root.
USER 65534:65534
ENTRYPOINT ["herd"]
CMD ["--help"]
