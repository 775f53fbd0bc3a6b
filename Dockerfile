# pgtarn container image.
#   docker build -t pgtarn .
#   docker run -p 6432:6432 -p 9930:9930 -v "$PWD/my.toml:/etc/pgtarn/pgtarn.toml:ro" pgtarn
# The default config baked in is the compose demo's (config/pgtarn.docker.toml);
# mount your own over /etc/pgtarn/pgtarn.toml.

FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, in their own layer: build them against stub sources so
# that editing src/ does not rebuild every crate.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/hot_path.rs \
 && cargo build --release --locked \
 && rm -rf src benches

COPY src ./src
COPY benches ./benches
# Make sure cargo sees the real sources as newer than the stub build.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && strip target/release/pgtarn

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pgtarn \
 && useradd --system --uid 10001 --gid pgtarn --home-dir /nonexistent --shell /usr/sbin/nologin pgtarn
COPY --from=builder /build/target/release/pgtarn /usr/local/bin/pgtarn
COPY config/pgtarn.docker.toml /etc/pgtarn/pgtarn.toml
USER pgtarn:pgtarn
# 6432: PostgreSQL clients; 9930: /metrics, /healthz, /readyz (metrics_addr).
EXPOSE 6432 9930
ENTRYPOINT ["pgtarn", "--config", "/etc/pgtarn/pgtarn.toml"]
