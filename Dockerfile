# fanout's image: one binary, every role as a subcommand (`fanout edge`, ...).
# Not built in CI (no Docker daemon or base-image registry there); .ci/deploy-check
# checks that the manifests agree with it (USER, EXPOSE, ENTRYPOINT).
#   docker build -t fanout .

FROM rust:1.95-bookworm AS builder
# rdkafka-sys builds librdkafka from source with its configure script (C and C++
# compilers, make, python3 for the script, pkg-config); libz-sys links the system zlib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config python3 zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# --locked: the image gets exactly the dependencies CI tested.
RUN cargo build --release --locked -p fanout \
    && cp target/release/fanout /fanout

FROM debian:bookworm-slim
# The binary links zlib, libgcc and glibc only (ldd); slim has all three. ca-certificates
# for brokers reached over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 fanout \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fanout
COPY --from=builder /fanout /usr/local/bin/fanout
# Numeric, so the kubelet can enforce runAsNonRoot; the manifests use the same uid.
USER 10001:10001
# 8080: the edge's clients (/cable, /realtime); 8081: the api's HTTP; 9090: the admin
# port of every role.
EXPOSE 8080 8081 9090
ENTRYPOINT ["/usr/local/bin/fanout"]
