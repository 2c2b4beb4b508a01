# podid: a static binary (musl, rustls: no libc, no OpenSSL) on an empty base, run as a non-root
# user. Build from the repository root: docker build -f deploy/images/podid.Dockerfile -t podid .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p podid-cli --bin podid \
    && install -D target/x86_64-unknown-linux-musl/release/podid /out/podid

FROM scratch
# TLS roots for Azure Resource Manager and Entra.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/podid /podid
USER 65532:65532
ENTRYPOINT ["/podid"]
