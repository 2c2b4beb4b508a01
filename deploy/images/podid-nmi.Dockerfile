# podid-nmi: a static binary (musl, rustls) on a minimal Debian with iptables and conntrack,
# which the agent runs to write its NAT rules. Build from the repository root:
#   docker build -f deploy/images/podid-nmi.Dockerfile -t podid-nmi .
#   docker build -f deploy/images/podid-nmi.Dockerfile --build-arg IPTABLES=legacy -t podid-nmi:legacy .
# IPTABLES picks the backend: nft (NET_ADMIN only) or legacy (NET_ADMIN and NET_RAW); use the
# node's (the backend its kube-proxy writes), and set the chart's images.nmi.iptables to match.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p podid-nmi --bin podid-nmi \
    && install -D target/x86_64-unknown-linux-musl/release/podid-nmi /out/podid-nmi

FROM debian:bookworm-slim
ARG IPTABLES=nft
RUN apt-get update && apt-get install -y --no-install-recommends iptables conntrack ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && update-alternatives --set iptables "/usr/sbin/iptables-$IPTABLES" \
    && update-alternatives --set ip6tables "/usr/sbin/ip6tables-$IPTABLES"
COPY --from=build /out/podid-nmi /podid-nmi
# Root, by necessity: the agent writes iptables rules in the node's network namespace. The
# chart gives it NET_ADMIN (and NET_RAW for legacy iptables) and drops every other capability.
USER 0:0
ENTRYPOINT ["/podid-nmi"]
